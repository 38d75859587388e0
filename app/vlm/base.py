"""The one protocol every vision-language backend implements, its declared capabilities, and the registry.

A backend maps images and texts into one joint space (L2-normalised vectors); logits are
``logit_scale * <image, text> + logit_bias`` as in CLIP (Radford et al., 2021) and SigLIP (Zhai et al.,
2023). Backends may also expose the backbone's own image-space features (e.g. the offline model's pooled
EfficientNet features, or the CLIP image tower's pre-projection output) so TrustVLM's image space can reuse
the same forward pass.

Backends speak numpy: their towers run on any runtime of :mod:`app.runtime` (torch, ONNX Runtime,
OpenVINO), so nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from app.runtime.towers import RUNTIME_PRECISIONS, RuntimeContext
from app.runtime.types import PRECISIONS, RUNTIMES, Precision, Runtime, TowerReport, UnsupportedSettingError


@dataclass
class ImageEncoding:
    """Output of one image forward pass.

    embeddings: (B, D) L2-normalised joint-space vectors, float32.
    features:   (B, F) raw (not normalised) image-space features from the same pass, float32, or None when
                the backend exposes none.
    """

    embeddings: np.ndarray
    features: np.ndarray | None = None


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do, declared next to its factory and checked at start-up.

    ``runtimes`` / ``precisions``: where its towers can run; ``torch_compile``: whether the torch runtime may
    wrap its towers in ``torch.compile``; ``logit_bias``: whether its checkpoints can carry a logit bias.
    """

    runtimes: frozenset[Runtime] = frozenset(RUNTIMES)
    precisions: frozenset[Precision] = frozenset(PRECISIONS)
    torch_compile: bool = True
    logit_bias: bool = False

    def check(self, backend: str, context: RuntimeContext) -> None:
        """Refuse, with a clear message, settings this backend cannot honour."""
        request = context.request
        if request.runtime != "auto" and request.runtime not in self.runtimes:
            raise UnsupportedSettingError(
                f"backend {backend!r} cannot run on {request.runtime!r}; it runs on {sorted(self.runtimes)}"
            )
        if request.precision not in self.precisions:
            raise UnsupportedSettingError(
                f"backend {backend!r} does not support precision {request.precision!r}; "
                f"it supports {sorted(self.precisions)}"
            )
        if request.torch_compile and not self.torch_compile:
            raise UnsupportedSettingError(f"backend {backend!r} does not support TRUSTSERVE_TORCH_COMPILE")


@runtime_checkable
class VLMBackend(Protocol):
    """A zero-shot dual encoder."""

    name: str
    logit_scale: float
    logit_bias: float
    embedding_dim: int
    towers: dict[str, TowerReport]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> (3, H, W) float32 array ready for ``encode_images``."""
        ...

    def encode_images(self, pixels: np.ndarray) -> ImageEncoding:
        """(B, 3, H, W) preprocessed batch -> joint-space embeddings (+ backbone features)."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, D) L2-normalised joint-space embeddings, float32."""
        ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (as ``torch.nn.functional.normalize``, eps 1e-12)."""
    x = x.astype(np.float32, copy=False)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def encode_in_chunks(
    encode_chunk: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str], chunk: int, dim: int
) -> np.ndarray:
    """Texts -> (N, dim) by calling ``encode_chunk`` on at most ``chunk`` texts at a time."""
    if not texts:
        return np.empty((0, dim), dtype=np.float32)
    return np.concatenate([encode_chunk(texts[i : i + chunk]) for i in range(0, len(texts), chunk)])


BackendFactory = Callable[..., VLMBackend]


@dataclass(frozen=True)
class RegisteredBackend:
    factory: BackendFactory
    capabilities: BackendCapabilities


BACKENDS: dict[str, RegisteredBackend] = {}


def register_backend(
    name: str, capabilities: BackendCapabilities | None = None
) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering a ``(context: RuntimeContext, **args) -> VLMBackend`` factory under ``name``."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        BACKENDS[name] = RegisteredBackend(factory, capabilities or BackendCapabilities())
        return factory

    return wrap


def backend_capabilities(name: str) -> BackendCapabilities:
    from app.vlm import registry  # noqa: F401  (fills BACKENDS)

    if name not in BACKENDS:
        raise KeyError(f"unknown VLM backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name].capabilities


def create_backend(name: str, context: RuntimeContext, **args: Any) -> VLMBackend:
    """Build a registered backend by name after checking its capabilities against the settings."""
    capabilities = backend_capabilities(name)
    capabilities.check(name, context)
    return BACKENDS[name].factory(context, **args)


__all__ = [
    "BACKENDS",
    "RUNTIME_PRECISIONS",
    "BackendCapabilities",
    "ImageEncoding",
    "VLMBackend",
    "create_backend",
    "encode_in_chunks",
    "l2_normalize",
    "register_backend",
]
