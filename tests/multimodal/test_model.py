"""Encoders registry and the late-fusion classifier."""

import pytest
import torch
from torch import nn

from app.multimodal.encoders import FeatureEncoder, create_encoder, encoder_kinds, register_encoder
from app.multimodal.model import LateFusionClassifier
from app.multimodal.specs import FusionSpec, ModalitySpec


def test_registry_lists_builtin_kinds_and_rejects_unknown() -> None:
    assert {"features", "image_cnn", "spectrogram_cnn"} <= set(encoder_kinds())
    with pytest.raises(ValueError, match="unknown encoder kind"):
        create_encoder("nope", [4], 4)
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("features")(lambda *a, **k: nn.Identity())


@pytest.mark.parametrize(
    ("kind", "shape", "args"),
    [
        ("features", [10], {}),
        ("features", [10], {"hidden_dims": [7]}),
        ("image_cnn", [1, 8, 8], {}),
        ("image_cnn", [3, 16, 12], {"channels": [4]}),
        ("spectrogram_cnn", [32, 81], {}),
    ],
)
def test_encoders_output_embed_dim(kind: str, shape: list[int], args: dict) -> None:
    enc = create_encoder(kind, shape, 5, **args)
    assert enc(torch.randn(2, *shape)).shape == (2, 5)


def test_feature_encoder_is_identity_when_dims_match() -> None:
    x = torch.randn(3, 4)
    assert torch.equal(FeatureEncoder(4, 4)(x), x)


def test_fusion_shapes_and_outlier_column(tiny_spec: FusionSpec) -> None:
    model = LateFusionClassifier(tiny_spec)
    out = model({"video": torch.randn(4, 12), "audio": torch.randn(4, 6)})
    assert out.fused_logits.shape == (4, 4)  # 3 classes + outlier
    assert {k: v.shape for k, v in out.unimodal_logits.items()} == {"video": (4, 4), "audio": (4, 4)}
    assert model.class_logits(out.fused_logits).shape == (4, 3)
    assert out.embeddings["video"].shape == (4, 8)
    # fused head = linear over the concatenation in spec order
    manual = model.fused_head(torch.cat([out.embeddings["video"], out.embeddings["audio"]], 1))
    assert torch.allclose(manual, out.fused_logits)


def test_fusion_uses_post_dropout_embeddings() -> None:
    spec = FusionSpec(
        modalities=[
            ModalitySpec(name="a", encoder="features", input_shape=[64], embed_dim=64),
            ModalitySpec(name="b", encoder="features", input_shape=[64], embed_dim=64),
        ],
        num_classes=2,
        dropout=0.5,
    )
    model = LateFusionClassifier(spec).train()
    x = {"a": torch.ones(1, 64), "b": torch.ones(1, 64)}
    emb = model(x).embeddings["a"]
    assert set(emb.unique().tolist()) <= {0.0, 2.0} and (emb == 0).any()
    model.eval()
    assert torch.equal(model(x).embeddings["a"], x["a"])


def test_three_modalities_and_missing_one() -> None:
    spec = FusionSpec(
        modalities=[
            ModalitySpec(name=n, encoder="features", input_shape=[d], embed_dim=d)
            for n, d in [("video", 6), ("flow", 5), ("audio", 4)]
        ],
        num_classes=2,
    )
    model = LateFusionClassifier(spec).eval()
    out = model({"video": torch.randn(2, 6), "flow": torch.randn(2, 5), "audio": torch.randn(2, 4)})
    assert out.fused_logits.shape == (2, 2) and len(out.unimodal_logits) == 3
    with pytest.raises(KeyError, match="flow"):
        model({"video": torch.randn(2, 6), "audio": torch.randn(2, 4)})


def test_spec_validation() -> None:
    one = [ModalitySpec(name="a", encoder="features", input_shape=[3], embed_dim=3)]
    with pytest.raises(ValueError):
        FusionSpec(modalities=one, num_classes=2)
    with pytest.raises(ValueError, match="unique"):
        FusionSpec(modalities=one * 2, num_classes=2)
