"""DINOv2 auxiliary encoder on a tiny random Dinov2Model saved to disk and loaded back, on every runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from transformers import CLIPVisionConfig, Dinov2Config, Dinov2Model

from app.vlm.aux.dinov2 import create_dinov2_encoder, dinov2_preprocessor
from app.vlm.aux_base import AuxImageEncoder, TowerImageEncoder
from tests.support.runtime import ALL_RUNTIMES, make_context


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-dinov2")
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(path)
    return path


def _encoder(dinov2_dir: Path, cache: Path, runtime: str = "torch") -> TowerImageEncoder:
    context = make_context(cache, runtime)
    return create_dinov2_encoder(context, model_id=str(dinov2_dir), image_size=32, local_files_only=True)


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_feature_is_the_mean_of_all_output_tokens(dinov2_dir: Path, tmp_path: Path, runtime: str) -> None:
    encoder = _encoder(dinov2_dir, tmp_path, runtime)
    assert isinstance(encoder, AuxImageEncoder)
    assert encoder.dim == 16
    pixels = np.stack([encoder.preprocess(_image(seed)) for seed in range(3)])
    assert pixels.shape == (3, 3, 32, 32)
    features = encoder.encode(pixels)
    model = Dinov2Model.from_pretrained(dinov2_dir).eval()
    with torch.no_grad():
        tokens = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert tokens.shape[1] == 1 + (32 // 8) ** 2  # CLS + 16 patches, all averaged
    assert np.abs(features - tokens.mean(axis=1)).max() < 1e-4 * max(1.0, np.abs(tokens).max())
    assert not np.allclose(features, tokens[:, 0])  # not the CLS token alone
    assert features.dtype == np.float32
    assert not np.allclose(np.linalg.norm(features, axis=-1), 1.0)  # raw, not normalised


@pytest.mark.parametrize(
    ("mode", "mean", "std"),
    [("reference", OPENAI_DATASET_MEAN, OPENAI_DATASET_STD), ("native", IMAGENET_MEAN, IMAGENET_STD)],
)
def test_modes_normalise_with_their_own_statistics(mode: str, mean: tuple, std: tuple) -> None:
    grey = Image.new("RGB", (50, 40), (128, 128, 128))
    pixels = dinov2_preprocessor(mode, image_size=32)(grey)  # type: ignore[arg-type]
    assert pixels.shape == (3, 32, 32)
    expected = (128 / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(pixels[:, 16, 16], expected, rtol=1e-4, atol=1e-4)


def test_native_mode_resizes_to_256_over_224_before_the_crop() -> None:
    # a 2-pixel black frame survives the reference resize+crop of a 224 image but not the native one
    framed = np.full((224, 224, 3), 255, dtype=np.uint8)
    framed[:, :2] = 0
    image = Image.fromarray(framed)
    reference, native = dinov2_preprocessor("reference")(image), dinov2_preprocessor("native")(image)
    assert reference.shape == native.shape == (3, 224, 224)
    assert reference[:, 112, 0].mean() < 0 < native[:, 112, 0].mean()


def test_rejects_unknown_mode_and_non_dinov2_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown DINOv2 preprocessing mode"):
        dinov2_preprocessor("imagenet")  # type: ignore[arg-type]
    CLIPVisionConfig(hidden_size=16, num_attention_heads=2).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="not DINOv2"):
        _encoder(tmp_path / "m", tmp_path / "cache")
