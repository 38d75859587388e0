"""DINOv2 (Oquab et al., 2023) as TrustVLM's image space g, as in the TrustVLM reference code.

Per-image feature: the mean over *all* output tokens of ``last_hidden_state`` (CLS + patches, and the
register tokens for the ``with_registers`` variants), not normalised (Dong et al., 2025, arXiv 2505.23745).
"""

from __future__ import annotations

from typing import Literal

import torch
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision import transforms
from transformers import AutoConfig, AutoModel, PreTrainedModel

from app.vlm.aux_base import register_aux_encoder

DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
PreprocessMode = Literal["reference", "native"]


def dinov2_transform(mode: PreprocessMode, image_size: int = 224) -> transforms.Compose:
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
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


class Dinov2Encoder:
    """An :class:`~app.vlm.aux_base.AuxImageEncoder` over a transformers DINOv2 model."""

    def __init__(
        self,
        model: PreTrainedModel,
        transform: transforms.Compose,
        *,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.dim: int = int(model.config.hidden_size)
        self._model = model
        self._transform = transform

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, image_size, image_size) float32."""
        return self._transform(image.convert("RGB"))

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, hidden_size): mean of ``last_hidden_state`` over all tokens, float32 CPU."""
        pixels = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
        tokens = self._model(pixel_values=pixels).last_hidden_state
        return tokens.float().mean(dim=1).cpu()


@register_aux_encoder("dinov2")
def create_dinov2_encoder(
    device: torch.device,
    dtype: torch.dtype,
    model_id: str = "facebook/dinov2-base",
    mode: PreprocessMode = "reference",
    image_size: int = 224,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
) -> Dinov2Encoder:
    """Factory for ``aux_encoder: {kind: dinov2}``; ``model_id`` is a Hub id or a local folder."""
    transform = dinov2_transform(mode, image_size)
    hub_kwargs = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    config = AutoConfig.from_pretrained(model_id, **hub_kwargs)
    if config.model_type not in DINOV2_MODEL_TYPES:
        raise ValueError(f"{model_id!r} is a {config.model_type!r} model, not DINOv2")
    model = AutoModel.from_pretrained(model_id, dtype=dtype, **hub_kwargs)
    return Dinov2Encoder(
        model.to(device).eval(),
        transform,
        name=f"dinov2:{model_id}/{mode}",
        device=device,
        dtype=dtype,
    )
