"""timm auxiliary encoder on timm's tiny test models (random weights, and a local weights file), on every
runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from app.vlm.aux.timm_encoder import create_timm_encoder
from app.vlm.aux_base import AuxImageEncoder
from tests.support.runtime import ALL_RUNTIMES, make_context


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))


@pytest.mark.parametrize(("model_name", "dim"), [("test_vit", 64), ("test_resnet", 96)])
def test_random_backbone_gives_pooled_features(model_name: str, dim: int, tmp_path: Path) -> None:
    encoder = create_timm_encoder(make_context(tmp_path), model_name=model_name, pretrained=False)
    assert isinstance(encoder, AuxImageEncoder)
    assert encoder.dim == dim
    pixels = np.stack([encoder.preprocess(_image(seed)) for seed in range(2)])
    assert pixels.shape == (2, 3, 160, 160)  # the test models' pretrained-config input size
    features = encoder.encode(pixels)
    assert features.shape == (2, dim) and features.dtype == np.float32
    assert not np.allclose(features[0], features[1])


def test_numpy_preprocessing_equals_timms_transform(tmp_path: Path) -> None:
    from timm.data import create_transform, resolve_data_config

    encoder = create_timm_encoder(make_context(tmp_path), model_name="test_resnet")
    transform = create_transform(
        **resolve_data_config(model=timm.create_model("test_resnet")), is_training=False
    )
    for seed in range(3):
        np.testing.assert_allclose(
            encoder.preprocess(_image(seed)), transform(_image(seed)).numpy(), atol=1e-6
        )


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_loads_a_local_weights_file_and_drops_the_classifier(tmp_path: Path, runtime: str) -> None:
    torch.manual_seed(0)
    classifier = timm.create_model("test_resnet", num_classes=7).eval()
    save_file(classifier.state_dict(), str(tmp_path / "weights.safetensors"))
    encoder = create_timm_encoder(
        make_context(tmp_path / "cache", runtime),
        "test_resnet",
        pretrained=str(tmp_path / "weights.safetensors"),
    )
    pixels = encoder.preprocess(_image())[None]
    with torch.no_grad():
        tensor = torch.from_numpy(pixels)
        expected = classifier.forward_head(classifier.forward_features(tensor), pre_logits=True).numpy()
    assert np.abs(encoder.encode(pixels) - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_timm_encoder(
            make_context(tmp_path), "test_resnet", pretrained=str(tmp_path / "nope.safetensors")
        )
