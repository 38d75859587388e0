"""Any timm backbone as TrustVLM's image space g (the paper also uses a MoCo v2 ResNet-50 this way).

Features are the backbone's pooled pre-classifier output (``num_classes=0``); preprocessing is timm's
own evaluation transform for the model's pretrained config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from app.vlm.aux_base import register_aux_encoder
from app.vlm.base import to_model_input


class TimmEncoder:
    """An :class:`~app.vlm.aux_base.AuxImageEncoder` over a timm model with its classifier removed."""

    def __init__(
        self,
        model: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        # head_hidden_size differs from num_features for models with a pre-logits MLP (e.g. some ConvNeXts)
        self.dim: int = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self._model = model
        self._transform = transform

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, H, W) float32 with timm's eval transform (resize, centre crop, normalise)."""
        return self._transform(image.convert("RGB"))

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim) pooled features, float32 on CPU."""
        pixels = to_model_input(pixels, self.device, self.dtype)
        return self._model(pixels).float().cpu()


@register_aux_encoder("timm")
def create_timm_encoder(
    device: torch.device,
    dtype: torch.dtype,
    model_name: str,
    pretrained: bool | str = False,
) -> TimmEncoder:
    """Factory for ``aux_encoder: {kind: timm}``.

    ``pretrained``: ``false`` = random weights, ``true`` = timm's default weights (downloaded from the Hub),
    or a path to a local weights file (safetensors preferred) loaded through timm's pretrained-weights
    path, which drops the classifier for us.
    """
    if isinstance(pretrained, str):
        weights = Path(pretrained).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"timm weights file {pretrained!r} does not exist")
        model = timm.create_model(
            model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)}
        )
    else:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    model = model.to(device=device, dtype=dtype).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    weights_label = pretrained if isinstance(pretrained, str) else ("pretrained" if pretrained else "random")
    return TimmEncoder(
        model, transform, name=f"timm:{model_name}/{weights_label}", device=device, dtype=dtype
    )
