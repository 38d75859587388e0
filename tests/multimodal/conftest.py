"""Tiny specs shared by the multimodal tests (random weights, millisecond forward passes)."""

import pytest

from app.multimodal.specs import FusionSpec, ModalitySpec


@pytest.fixture
def tiny_spec() -> FusionSpec:
    return FusionSpec(
        modalities=[
            ModalitySpec(name="video", encoder="features", input_shape=[12], embed_dim=8, encoder_args={}),
            ModalitySpec(name="audio", encoder="features", input_shape=[6], embed_dim=6),
        ],
        num_classes=3,
        dropout=0.0,
        outlier_class=True,
    )
