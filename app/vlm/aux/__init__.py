"""Auxiliary image encoders; each module registers itself with ``@register_aux_encoder``."""

import importlib
import logging

log = logging.getLogger(__name__)

for _module in ("dinov2", "timm_encoder", "open_clip_tower"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:
        log.debug("aux encoder module %s not available: %s", _module, exc)
