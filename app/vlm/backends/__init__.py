"""VLM backends; each module registers itself with ``@register_backend`` (one import line each)."""

from app.vlm.backends import (
    offline_conse,  # noqa: F401
    open_clip_backend,  # noqa: F401
    transformers_backend,  # noqa: F401
)
