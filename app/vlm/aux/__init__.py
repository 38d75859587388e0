"""Auxiliary image encoders; each module registers itself with ``@register_aux_encoder`` (one import
line each)."""

from app.vlm.aux import (
    dinov2,  # noqa: F401
    efficientnet_lite,  # noqa: F401
    open_clip_tower,  # noqa: F401
    timm_encoder,  # noqa: F401
)
