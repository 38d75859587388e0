"""Auxiliary image encoders: the image space in which TrustVLM compares an image to class prototypes.

TrustVLM (Dong et al., 2025, arXiv 2505.23745) uses an image encoder g that need not be the VLM's own:
DINOv2 in the reference, CLIP's image tower, MoCo v2. An encoder returns *raw* features; scoring
L2-normalises them (prototypes are the normalised mean of raw support features).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class AuxImageEncoder(Protocol):
    """A separate image encoder with its own preprocessing."""

    name: str
    dim: int
    device: torch.device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> (3, H, W) float32 tensor."""
        ...

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim) raw features, float32 on CPU."""
        ...


AuxFactory = Callable[..., AuxImageEncoder]
AUX_ENCODERS: dict[str, AuxFactory] = {}

# Kind name meaning "reuse the VLM backend's own forward pass" (ImageEncoding.features, or the
# embeddings when the backend exposes no features). No second model, no second forward.
SHARED_TOWER = "vlm"


def register_aux_encoder(name: str) -> Callable[[AuxFactory], AuxFactory]:
    """Decorator: ``@register_aux_encoder("dinov2")`` on a factory ``(device, dtype, **args)``."""

    def wrap(factory: AuxFactory) -> AuxFactory:
        AUX_ENCODERS[name] = factory
        return factory

    return wrap
