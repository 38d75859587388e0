"""multimodal."""
