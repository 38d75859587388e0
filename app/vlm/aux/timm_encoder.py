"""Any timm backbone as TrustVLM's image space g (the paper also uses a MoCo v2 ResNet-50 this way).

Features are the backbone's pooled pre-classifier output (``num_classes=0``); preprocessing is timm's
own evaluation transform for the model's pretrained config (resize to ``size / crop_pct``, centre crop).
"""

from __future__ import annotations

import math
from importlib.metadata import version
from pathlib import Path
from typing import Any

from app.runtime.towers import RuntimeContext
from app.vlm.aux_base import (
    TowerImageEncoder,
    cached_preprocessor,
    create_tower_encoder,
    register_aux_encoder,
)
from app.vlm.preprocessing import ImagePreprocessor
from app.vlm.towers import weights_identity

RANDOM_INIT_SEED = 0


def load_timm_model(model_name: str, pretrained: bool | str) -> Any:
    """The timm model without its classifier, in eval mode (fp32, CPU); random weights are seeded."""
    import timm
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        if isinstance(pretrained, str):
            overlay = {"file": str(Path(pretrained).expanduser())}
            model = timm.create_model(
                model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay
            )
        else:
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    return model.eval()


def timm_preprocessor(model_name: str) -> ImagePreprocessor:
    """timm's eval transform for ``model_name`` (``resolve_data_config`` of its pretrained config)."""
    import timm
    from timm.data import resolve_data_config

    config = resolve_data_config(model=timm.create_model(model_name, pretrained=False, num_classes=0))
    size = int(config["input_size"][-1])
    return ImagePreprocessor(
        resize=math.floor(size / config["crop_pct"]),
        crop=size,
        interpolation=config["interpolation"] if config["interpolation"] != "random" else "bilinear",
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )


@register_aux_encoder("timm")
def create_timm_encoder(
    context: RuntimeContext, model_name: str, pretrained: bool | str = False
) -> TowerImageEncoder:
    """Factory for ``aux_encoder: {kind: timm}``.

    ``pretrained``: ``false`` = random weights (seeded), ``true`` = timm's default weights (downloaded from
    the Hub), or a path to a local weights file (safetensors preferred) loaded through timm's
    pretrained-weights path, which drops the classifier for us.
    """
    if isinstance(pretrained, str):
        if not Path(pretrained).expanduser().is_file():
            raise FileNotFoundError(f"timm weights file {pretrained!r} does not exist")
        weights, label = weights_identity(context.cache, pretrained), pretrained
    elif pretrained:
        weights, label = f"published:timm/{model_name}", "pretrained"
    else:
        weights, label = f"random-init:seed={RANDOM_INIT_SEED}:timm={version('timm')}", "random"
    identity = {"aux": "timm", "model": model_name, "weights": weights}
    return create_tower_encoder(
        context,
        name=f"timm:{model_name}/{label}",
        identity=identity,
        preprocessor=cached_preprocessor(context, "timm", identity, lambda: timm_preprocessor(model_name)),
        build_module=lambda: load_timm_model(model_name, pretrained),
        transformer="vit" in model_name or "deit" in model_name,
    )
