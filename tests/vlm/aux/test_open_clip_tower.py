"""A second open_clip model's image tower as the auxiliary encoder (loaded from a local model folder), on
every runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from app.vlm.aux.open_clip_tower import create_open_clip_tower
from app.vlm.aux_base import AuxImageEncoder
from tests.support.runtime import ALL_RUNTIMES, make_context
from tests.support.tiny_model import TINY_CONFIG


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_tower_output_is_the_unnormalised_image_embedding(tmp_path: Path, runtime: str) -> None:
    torch.manual_seed(3)
    reference = open_clip.CLIP(**TINY_CONFIG).eval()
    save_file(reference.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))

    tower = create_open_clip_tower(make_context(tmp_path / "cache", runtime), pretrained=str(tmp_path))
    assert isinstance(tower, AuxImageEncoder)
    assert tower.dim == TINY_CONFIG["embed_dim"]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = np.stack([tower.preprocess(image) for image in images])
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(torch.from_numpy(pixels), normalize=False).numpy()
    features = tower.encode(pixels)
    assert np.abs(features - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    assert not np.allclose(np.linalg.norm(features, axis=-1), 1.0)
