"""VLM backends; each module registers itself with ``@register_backend``."""

import importlib
import logging

log = logging.getLogger(__name__)

for _module in ("offline_conse", "open_clip_backend", "transformers_backend"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # a backend whose module is not written yet, or missing deps
        log.debug("backend module %s not available: %s", _module, exc)
