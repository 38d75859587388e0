"""The composed objective equals its terms computed by hand with the same random draws."""

import pytest
import torch

from app.multimodal.losses import (
    adaptive_confidence_loss,
    entropy_maximisation_loss,
    multihead_cross_entropy,
    soft_outlier_cross_entropy,
)
from app.multimodal.model import LateFusionClassifier
from app.multimodal.objective import VARIANTS, LossConfig, training_loss
from app.multimodal.specs import FusionSpec
from app.multimodal.synthesis import mix_features, sample_mix_plan, sample_swap_plan, swap_blocks


def _batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"video": torch.randn(5, 12, generator=g), "audio": torch.randn(5, 6, generator=g)}, torch.tensor(
        [0, 1, 2, 0, 1]
    )


def test_acr_total_matches_terms(tiny_spec: FusionSpec) -> None:
    torch.manual_seed(0)
    model = LateFusionClassifier(tiny_spec)
    x, y = _batch()
    cfg = LossConfig.variant("acr", n_min=2, n_max=4, lambda_acl=2.0, lambda_mfs=1.0)
    got = training_loss(model, x, y, cfg, torch.Generator().manual_seed(7))

    out = model(x)
    uni = list(out.unimodal_logits.values())
    plan = sample_swap_plan(8, 6, 2, 4, torch.Generator().manual_seed(7))
    va, au = swap_blocks(out.embeddings["video"], out.embeddings["audio"], plan)
    swapped = model.fused_head(torch.cat([va, au], 1))
    expected = (
        multihead_cross_entropy(out.fused_logits, uni, y)
        + 2.0 * adaptive_confidence_loss(out.fused_logits, uni)
        + soft_outlier_cross_entropy(swapped, y, plan.n / 4, 3)
    )
    assert got.total.item() == pytest.approx(expected.item(), abs=1e-6)
    assert set(got.terms) == {"cls", "acl", "mfs", "total"}


def test_feature_mixing_total_matches_terms(tiny_spec: FusionSpec) -> None:
    torch.manual_seed(0)
    model = LateFusionClassifier(tiny_spec)
    x, y = _batch()
    cfg = LossConfig.variant("feature_mixing", mix_dims=3, gamma_mix=0.5)
    got = training_loss(model, x, y, cfg, torch.Generator().manual_seed(1))
    out = model(x)
    plan = sample_mix_plan(8, 6, 3, False, torch.Generator().manual_seed(1))
    va, au = mix_features(out.embeddings["video"], out.embeddings["audio"], plan)
    mixed = model.fused_head(torch.cat([va, au], 1))[:, :3]
    expected = multihead_cross_entropy(out.fused_logits, list(out.unimodal_logits.values()), y)
    expected = expected + 0.5 * entropy_maximisation_loss(mixed)
    assert got.total.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_backpropagates(tiny_spec: FusionSpec, variant: str) -> None:
    model = LateFusionClassifier(tiny_spec)
    x, y = _batch()
    result = training_loss(model, x, y, LossConfig.variant(variant, n_min=2, n_max=4))
    result.total.backward()
    assert torch.isfinite(result.total)
    assert model.fused_head.weight.grad is not None


def test_mfs_requires_outlier_class(tiny_spec: FusionSpec) -> None:
    model = LateFusionClassifier(tiny_spec.model_copy(update={"outlier_class": False}))
    x, y = _batch()
    with pytest.raises(ValueError, match="outlier_class"):
        training_loss(model, x, y, LossConfig.variant("mfs"))
    with pytest.raises(ValueError, match="unknown loss variant"):
        LossConfig.variant("nope")


def test_mfs_range_is_rescaled_explicitly_and_recorded() -> None:
    absolute = LossConfig.variant("acr", n_min=32, n_max=256)
    assert absolute.mfs_n_range(64, 128) == (32, 256)
    scaled = LossConfig.variant("acr", n_min=32, n_max=256, n_reference_dim=2048)
    assert scaled.mfs_n_range(256, 1280) == (4, 32)
    assert scaled.model_dump()["n_reference_dim"] == 2048  # what a checkpoint's training.loss stores


def test_rescaled_mfs_uses_lambda_of_the_rescaled_range(tiny_spec: FusionSpec) -> None:
    """With n_reference_dim, λ = n / n_max' of the rescaled range (here 6-d pair, ref 12: n ∈ [1, 3])."""
    torch.manual_seed(0)
    model = LateFusionClassifier(tiny_spec)
    x, y = _batch()
    cfg = LossConfig.variant("mfs", n_min=2, n_max=6, n_reference_dim=12)
    got = training_loss(model, x, y, cfg, torch.Generator().manual_seed(3))
    out = model(x)
    plan = sample_swap_plan(8, 6, 1, 3, torch.Generator().manual_seed(3))
    va, au = swap_blocks(out.embeddings["video"], out.embeddings["audio"], plan)
    expected = multihead_cross_entropy(out.fused_logits, list(out.unimodal_logits.values()), y)
    expected = expected + soft_outlier_cross_entropy(
        model.fused_head(torch.cat([va, au], 1)), y, plan.n / 3, 3
    )
    assert got.total.item() == pytest.approx(expected.item(), abs=1e-6)
