"""A real ClassificationEngine on a tiny random-weight open_clip model (real code paths, random numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.vlm.backends.open_clip_backend import create_open_clip_backend
from app.vlm.presets import ModelPreset
from tests.support.runtime import make_context

TINY_ARCH = "trustserve-labelsets-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128)}


def make_settings(store_dir: Path, **overrides: object) -> Settings:
    return Settings(store_dir=store_dir, warmup=False, device="cpu", dtype="float32", **overrides)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> ClassificationEngine:
    path = tmp_path_factory.mktemp("open_clip_cfg") / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    backend = create_open_clip_backend(
        make_context(tmp_path_factory.mktemp("export-cache")), architecture=TINY_ARCH
    )
    preset = ModelPreset(name="tiny-test", backend="open_clip", args={"architecture": TINY_ARCH})
    settings = make_settings(tmp_path_factory.mktemp("unused-store"))
    return ClassificationEngine(preset, backend, None, settings)


def colour_image(name: str, seed: int = 0, size: tuple[int, int] = (40, 40)) -> Image.Image:
    """A noisy solid-colour image: a visually separable class for a random-weight model."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[name], dtype=np.float64)
    pixels = base + rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
