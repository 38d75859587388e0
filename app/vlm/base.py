"""The one protocol every vision-language backend implements, and the backend registry.

A backend maps images and texts into one joint space (L2-normalised vectors); logits are
``logit_scale * <image, text>`` as in CLIP (Radford et al., 2021). Backends may also expose the
backbone's own image-space features (e.g. the offline model's pooled EfficientNet features, or the
CLIP image tower's pre-projection output) so TrustVLM's image space can reuse the same forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


@dataclass
class ImageEncoding:
    """Output of one image forward pass.

    embeddings: (B, D) L2-normalised joint-space vectors, float32 on CPU.
    features:   (B, F) raw (not normalised) image-space features from the same pass, float32 on CPU,
                or None when the backend exposes none.
    """

    embeddings: torch.Tensor
    features: torch.Tensor | None = None


@runtime_checkable
class VLMBackend(Protocol):
    """A zero-shot dual encoder."""

    name: str
    device: torch.device
    dtype: torch.dtype
    logit_scale: float
    embedding_dim: int

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> (3, H, W) float32 tensor ready for ``encode_images``."""
        ...

    def encode_images(self, pixels: torch.Tensor) -> ImageEncoding:
        """(B, 3, H, W) preprocessed batch -> joint-space embeddings (+ backbone features)."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, D) L2-normalised joint-space embeddings, float32 on CPU."""
        ...


def to_model_input(pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A CPU batch -> the model's device and dtype (non-blocking from pinned memory); channels_last on
    CUDA, where convolution and attention kernels prefer it."""
    pixels = pixels.to(device, dtype=dtype, non_blocking=True)
    if device.type == "cuda":
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    return pixels


BackendFactory = Callable[..., VLMBackend]
BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering a ``(device, dtype, **args) -> VLMBackend`` factory under ``name``."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        BACKENDS[name] = factory
        return factory

    return wrap


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 on CPU."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }[dtype]


def create_backend(name: str, *, device: str = "auto", dtype: str = "auto", **args: Any) -> VLMBackend:
    """Build a registered backend by name."""
    from app.vlm import registry  # noqa: F401  (fills BACKENDS)

    if name not in BACKENDS:
        raise KeyError(f"unknown VLM backend {name!r}; known: {sorted(BACKENDS)}")
    dev = resolve_device(device)
    return BACKENDS[name](device=dev, dtype=resolve_dtype(dtype, dev), **args)
