"""Helpers every backend and auxiliary encoder uses to describe its towers to the runtime layer: an image
tower fed by an :class:`~app.vlm.preprocessing.ImagePreprocessor`, a text tower fed by a tokenizer, and the
weights identity (checksums) that keys the export cache — all without importing torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.runtime.cache import ExportCache
from app.runtime.source import TowerSource
from app.runtime.types import PRECISIONS, Precision, TensorSpec, TowerSpec
from app.vlm.preprocessing import ImagePreprocessor, probe_images
from app.vlm.tokenization import PROBE_TEXTS, TextTokenizer

IMAGE_INPUT = "pixels"


def image_tower_source(
    *,
    model: str,
    tower: str,
    identity: dict[str, Any],
    preprocessor: ImagePreprocessor,
    build_module: Callable[[], Any],
    outputs: tuple[str, ...],
    precisions: tuple[Precision, ...] = PRECISIONS,
    transformer: bool = False,
) -> TowerSource:
    """A tower taking a (B, 3, S, S) float32 batch made by ``preprocessor``."""
    size = preprocessor.output_size
    spec = TowerSpec(
        (TensorSpec(IMAGE_INPUT, "float32", (None, 3, size, size)),),
        outputs,
        input_policy=f"image:{preprocessor.model_dump_json()}",
    )

    def probe(n: int) -> dict[str, np.ndarray]:
        return {IMAGE_INPUT: np.stack([preprocessor(im) for im in probe_images(n)])}

    def calibration(paths: Sequence[Path]) -> list[dict[str, np.ndarray]]:
        items = []
        for path in paths:
            with Image.open(path) as im:
                items.append({IMAGE_INPUT: preprocessor(im)[None]})
        return items

    return TowerSource(
        model, tower, spec, identity, build_module, probe, precisions, calibration, transformer
    )


def text_tower_source(
    *,
    model: str,
    identity: dict[str, Any],
    tokenizer: TextTokenizer,
    build_module: Callable[[], Any],
    outputs: tuple[str, ...],
    sequence_length: int | None,
    tower: str = "text",
) -> TowerSource:
    """A tower taking the tokenizer's int64 arrays; runs at fp32 whatever the precision setting (label
    embeddings are cached and must stay comparable with prototypes and calibration)."""
    spec = TowerSpec(
        tuple(TensorSpec(name, "int64", (None, sequence_length)) for name in tokenizer.input_names),
        outputs,
        input_policy=f"text:{sequence_length or 'dynamic'}",
    )

    def probe(n: int) -> dict[str, np.ndarray]:
        return tokenizer([PROBE_TEXTS[i % len(PROBE_TEXTS)] for i in range(n)])

    return TowerSource(model, tower, spec, identity, build_module, probe, ("fp32",), None, True)


def weights_identity(cache: ExportCache, location: str | Path) -> str:
    """sha256 of a weights file, or of every file of a model folder (memoised in the cache)."""
    path = Path(location).expanduser()
    if path.is_dir():
        return cache.tree_checksum(path)
    return cache.file_checksum(path)
