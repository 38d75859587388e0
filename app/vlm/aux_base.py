"""Auxiliary image encoders: the image space in which TrustVLM compares an image to class prototypes.

TrustVLM (Dong et al., 2025, arXiv 2505.23745) uses an image encoder g that need not be the VLM's own:
DINOv2 in the reference, CLIP's image tower, MoCo v2. An encoder returns *raw* features; scoring
L2-normalises them (prototypes are the normalised mean of raw support features).

Every kind is the same thing — a preprocessor plus one image tower on the runtime layer — so there is one
implementation, :class:`TowerImageEncoder`; a kind only says how to build its torch module, how to
preprocess, and what identifies its weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from app.runtime.executors import TowerExecutor
from app.runtime.towers import RuntimeContext
from app.vlm.preprocessing import ImagePreprocessor
from app.vlm.towers import image_tower_source

AUX_TOWER = "aux-image"
PREPROCESS_FILE = "preprocess.json"


@runtime_checkable
class AuxImageEncoder(Protocol):
    """A separate image encoder with its own preprocessing."""

    name: str
    dim: int

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> (3, H, W) float32."""
        ...

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) -> (B, dim) raw features, float32."""
        ...


class TowerImageEncoder:
    """An :class:`AuxImageEncoder`: ``preprocessor`` + one image tower returning (B, dim) features."""

    def __init__(self, name: str, preprocessor: ImagePreprocessor, tower: TowerExecutor) -> None:
        self.name, self.preprocessor, self.tower = name, preprocessor, tower
        probe = self.preprocess(Image.new("RGB", (32, 32))).reshape(1, 3, *preprocessor_shape(preprocessor))
        self.dim: int = int(self.encode(probe).shape[1])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocessor(image)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        [features] = self.tower.run({"pixels": pixels})
        return features


def preprocessor_shape(preprocessor: ImagePreprocessor) -> tuple[int, int]:
    return preprocessor.output_size, preprocessor.output_size


def create_tower_encoder(
    context: RuntimeContext,
    *,
    name: str,
    identity: dict[str, Any],
    preprocessor: ImagePreprocessor,
    build_module: Callable[[], Any],
    transformer: bool = False,
) -> TowerImageEncoder:
    """Describe the encoder's tower to the runtime layer and wrap the executor it returns."""
    source = image_tower_source(
        model=context.model,
        tower=AUX_TOWER,
        identity=identity,
        preprocessor=preprocessor,
        build_module=build_module,
        outputs=("features",),
        transformer=transformer,
    )
    return TowerImageEncoder(name, preprocessor, context.tower(source))


def cached_preprocessor(
    context: RuntimeContext, name: str, identity: dict[str, Any], build: Callable[[], ImagePreprocessor]
) -> ImagePreprocessor:
    """A preprocessor that needs the model's library to work out (e.g. timm's data config), worked out
    once and cached with the exports so a warm start does not import that library."""

    def write(folder: Path) -> dict[str, Any]:
        (folder / PREPROCESS_FILE).write_text(build().model_dump_json())
        return {}

    entry = context.assets(f"{name}-preprocess", identity, write)
    return ImagePreprocessor(**json.loads(entry.file(PREPROCESS_FILE).read_text()))


AuxFactory = Callable[..., AuxImageEncoder]
AUX_ENCODERS: dict[str, AuxFactory] = {}

# Kind name meaning "reuse the VLM backend's own forward pass" (ImageEncoding.features, or the
# embeddings when the backend exposes no features). No second model, no second forward.
SHARED_TOWER = "vlm"


def register_aux_encoder(name: str) -> Callable[[AuxFactory], AuxFactory]:
    """Decorator: ``@register_aux_encoder("dinov2")`` on a factory ``(context, **args)``."""

    def wrap(factory: AuxFactory) -> AuxFactory:
        AUX_ENCODERS[name] = factory
        return factory

    return wrap
