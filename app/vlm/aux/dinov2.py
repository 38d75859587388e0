"""DINOv2 (Oquab et al., 2023) as TrustVLM's image space g, as in the TrustVLM reference code.

Per-image feature: the mean over *all* output tokens of ``last_hidden_state`` (CLS + patches, and the
register tokens for the ``with_registers`` variants), not normalised (Dong et al., 2025, arXiv 2505.23745).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from app.runtime.towers import RuntimeContext
from app.vlm.aux_base import TowerImageEncoder, create_tower_encoder, register_aux_encoder
from app.vlm.preprocessing import ImagePreprocessor
from app.vlm.towers import weights_identity

DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
PreprocessMode = Literal["reference", "native"]
# the constants of open_clip.constants, written out so preprocessing needs no open_clip (and no torch)
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dinov2_preprocessor(mode: PreprocessMode, image_size: int = 224) -> ImagePreprocessor:
    """The image transform for each mode.

    ``reference``: the TrustVLM code's quirk — the CLIP transform (bicubic resize of the short side to
    ``image_size``, centre crop, CLIP mean/std) is fed to DINOv2.
    ``native``: DINOv2's own evaluation transform (resize to 256/224 · ``image_size``, centre crop,
    ImageNet mean/std).
    """
    if mode == "reference":
        resize, mean, std = image_size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    elif mode == "native":
        resize, mean, std = round(image_size * 256 / 224), IMAGENET_MEAN, IMAGENET_STD
    else:
        raise ValueError(f"unknown DINOv2 preprocessing mode {mode!r}; use 'reference' or 'native'")
    return ImagePreprocessor(resize=resize, crop=image_size, interpolation="bicubic", mean=mean, std=std)


def dinov2_tower(model_id: str, hub: dict[str, Any]) -> Any:
    """The DINOv2 model as a tower: pixels -> mean of ``last_hidden_state`` over all tokens."""
    from transformers import AutoModel

    from app.runtime.torch_executor import CallableTower

    model = AutoModel.from_pretrained(model_id, **hub).eval()
    return CallableTower(model, lambda m, pixels: m(pixel_values=pixels).last_hidden_state.mean(dim=1))


def _model_type(model_id: str, hub: dict[str, Any]) -> str:
    local = Path(model_id).expanduser() / "config.json"
    if local.is_file():  # no transformers import for a local folder
        return str(json.loads(local.read_text()).get("model_type"))
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(model_id, **hub).model_type)


@register_aux_encoder("dinov2")
def create_dinov2_encoder(
    context: RuntimeContext,
    model_id: str = "facebook/dinov2-base",
    mode: PreprocessMode = "reference",
    image_size: int = 224,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
) -> TowerImageEncoder:
    """Factory for ``aux_encoder: {kind: dinov2}``; ``model_id`` is a Hub id or a local folder."""
    preprocessor = dinov2_preprocessor(mode, image_size)
    hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    model_type = _model_type(model_id, hub)
    if model_type not in DINOV2_MODEL_TYPES:
        raise ValueError(f"{model_id!r} is a {model_type!r} model, not DINOv2")
    local = Path(model_id).expanduser()
    weights = weights_identity(context.cache, local) if local.is_dir() else f"published:{model_id}@{revision}"
    return create_tower_encoder(
        context,
        name=f"dinov2:{model_id}/{mode}",
        identity={"aux": "dinov2", "weights": weights},
        preprocessor=preprocessor,
        build_module=lambda: dinov2_tower(model_id, hub),
        transformer=True,
    )
