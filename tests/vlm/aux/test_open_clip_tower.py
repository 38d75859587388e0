"""A second open_clip model's image tower as the auxiliary encoder (loaded from a local model folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

from app.vlm.aux.open_clip_tower import create_open_clip_tower
from app.vlm.aux_base import AuxImageEncoder
from tests.support.tiny_model import TINY_CONFIG

CPU = torch.device("cpu")


def test_tower_output_is_the_unnormalised_image_embedding(tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = open_clip.CLIP(**TINY_CONFIG).eval()
    save_file(reference.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))

    tower = create_open_clip_tower(CPU, torch.float32, pretrained=str(tmp_path))
    assert isinstance(tower, AuxImageEncoder)
    assert tower.dim == TINY_CONFIG["embed_dim"]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = torch.stack([tower.preprocess(image) for image in images])
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(pixels, normalize=False)
    features = tower.encode(pixels)
    torch.testing.assert_close(features, expected)
    assert not torch.allclose(features.norm(dim=-1), torch.ones(2))
