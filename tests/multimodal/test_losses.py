"""Each loss against a case computed by hand."""

import math

import pytest
import torch

from app.multimodal.losses import (
    adaptive_confidence_loss,
    entropy_maximisation_loss,
    multihead_cross_entropy,
    soft_outlier_cross_entropy,
)

LN3 = math.log(3.0)


def test_multihead_cross_entropy_averages_heads() -> None:
    fused = torch.tensor([[0.0, 0.0]])  # p(y=0) = 1/2
    unimodal = [torch.tensor([[LN3, 0.0]])]  # p(y=0) = 3/4
    loss = multihead_cross_entropy(fused, unimodal, torch.tensor([0]))
    assert loss.item() == pytest.approx((math.log(2) - math.log(0.75)) / 2, abs=1e-6)


def test_adaptive_confidence_loss_hand_case() -> None:
    # sample 1: fused MSP 0.5, branch A 0.75 (gap 0.25), branch B 0.5 (gap 0)
    # sample 2: fused MSP 0.75, branch A 0.5 (gap 0), branch B 0.9 (gap 0.15)
    fused = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
    branch_a = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
    branch_b = torch.tensor([[0.0, 0.0], [math.log(9.0), 0.0]])
    loss = adaptive_confidence_loss(fused, [branch_a, branch_b])
    assert loss.item() == pytest.approx(((0.25 + 0) / 2 + (0 + 0.15) / 2) / 2, abs=1e-6)


def test_adaptive_confidence_loss_is_zero_when_fused_is_most_confident() -> None:
    fused = torch.tensor([[5.0, 0.0]])
    assert adaptive_confidence_loss(fused, [torch.tensor([[1.0, 0.0]])]).item() == 0.0


def test_adaptive_confidence_loss_has_no_stop_gradient() -> None:
    fused = torch.tensor([[0.0, 0.0]], requires_grad=True)
    branch = torch.tensor([[LN3, 0.0]], requires_grad=True)
    adaptive_confidence_loss(fused, [branch]).backward()
    assert fused.grad is not None and branch.grad is not None
    assert fused.grad[0, 0] < 0  # raising the fused top logit lowers the loss
    assert branch.grad[0, 0] > 0  # the over-confident branch is pushed down


def test_soft_outlier_cross_entropy_hand_case() -> None:
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0]])  # p = [1/2, 1/4, 1/4], outlier = index 2
    loss = soft_outlier_cross_entropy(logits, torch.tensor([0]), outlier_weight=0.25, outlier_index=2)
    assert loss.item() == pytest.approx(0.75 * math.log(2) + 0.25 * math.log(4), abs=1e-6)


def test_soft_outlier_cross_entropy_limits() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5]])
    y = torch.tensor([1])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert soft_outlier_cross_entropy(logits, y, 0.0, 2).item() == pytest.approx(ce.item(), abs=1e-6)
    all_outlier = torch.nn.functional.cross_entropy(logits, torch.tensor([2]))
    assert soft_outlier_cross_entropy(logits, y, 1.0, 2).item() == pytest.approx(all_outlier.item(), abs=1e-6)
    with pytest.raises(ValueError):
        soft_outlier_cross_entropy(logits, y, 1.5, 2)


def test_entropy_maximisation_loss_is_negative_entropy() -> None:
    assert entropy_maximisation_loss(torch.zeros(2, 4)).item() == pytest.approx(-math.log(4), abs=1e-6)
    assert entropy_maximisation_loss(torch.tensor([[50.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    # p = [3/4, 1/4]: H = 3/4 ln(4/3) + 1/4 ln 4
    expected = -(0.75 * math.log(4 / 3) + 0.25 * math.log(4))
    assert entropy_maximisation_loss(torch.tensor([[LN3, 0.0]])).item() == pytest.approx(expected, abs=1e-6)


def test_adaptive_confidence_loss_detached_branches_get_no_gradient() -> None:
    fused = torch.tensor([[0.0, 0.0]], requires_grad=True)
    branch = torch.tensor([[LN3, 0.0]], requires_grad=True)
    loss = adaptive_confidence_loss(fused, [branch], detach_unimodal=True)
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    loss.backward()
    assert branch.grad is None and fused.grad is not None and fused.grad[0, 0] < 0
