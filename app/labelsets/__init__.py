"""labelsets."""
