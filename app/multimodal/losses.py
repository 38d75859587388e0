"""Training losses for late-fusion classifiers (pure functions of logits and targets).

- ``multihead_cross_entropy``: mean CE over the fused head and every unimodal head (ACR reference's
  ``--use_single_pred``).
- ``adaptive_confidence_loss``: ACR's confidence-degradation penalty (arXiv 2603.02200),
  L_acl = (1/M) Σ_k mean_batch max(0, conf_k − conf_fused), conf = max softmax (MSP) of each head's full
  output (outlier column included when the heads have one). No stop-gradient.
- ``soft_outlier_cross_entropy``: MFS target (1 − λ)·onehot(y) + λ·onehot(outlier), λ = n/n_max.
- ``entropy_maximisation_loss``: Feature Mixing's objective on synthesised outliers (arXiv 2505.16985):
  minimise −H(softmax(z)), i.e. push outliers towards uniform predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def multihead_cross_entropy(
    fused_logits: torch.Tensor, unimodal_logits: Sequence[torch.Tensor], targets: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy averaged over the fused head and the M unimodal heads."""
    heads = [fused_logits, *unimodal_logits]
    return torch.stack([F.cross_entropy(logits, targets) for logits in heads]).mean()


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """MSP of each row, differentiable."""
    return F.softmax(logits, dim=1).max(dim=1).values


def adaptive_confidence_loss(
    fused_logits: torch.Tensor, unimodal_logits: Sequence[torch.Tensor], detach_unimodal: bool = False
) -> torch.Tensor:
    """ACL: (1/M) Σ_k mean_batch ReLU(MSP_k − MSP_fused) — penalise a fused head less sure than a branch.

    ``detach_unimodal`` (not in the paper; an ablation knob) stops the gradient into the unimodal
    confidences, so ACL only raises the fused confidence instead of also lowering the branches'.
    """
    if not unimodal_logits:
        raise ValueError("adaptive_confidence_loss needs at least one unimodal head")
    fused_conf = max_softmax(fused_logits)
    branch_confs = [max_softmax(logits) for logits in unimodal_logits]
    if detach_unimodal:
        branch_confs = [conf.detach() for conf in branch_confs]
    gaps = [F.relu(conf - fused_conf).mean() for conf in branch_confs]
    return torch.stack(gaps).mean()


def soft_outlier_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, outlier_weight: float, outlier_index: int
) -> torch.Tensor:
    """Cross-entropy against (1 − λ)·onehot(y) + λ·onehot(outlier_index), averaged over the batch."""
    if not 0.0 <= outlier_weight <= 1.0:
        raise ValueError(f"outlier weight λ must be in [0, 1], got {outlier_weight}")
    log_probs = F.log_softmax(logits, dim=1)
    class_term = log_probs.gather(1, targets[:, None]).squeeze(1)
    outlier_term = log_probs[:, outlier_index]
    return -((1.0 - outlier_weight) * class_term + outlier_weight * outlier_term).mean()


def entropy_maximisation_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean negative Shannon entropy of softmax(logits); minimising it maximises the entropy."""
    log_probs = F.log_softmax(logits, dim=1)
    return (log_probs.exp() * log_probs).sum(dim=1).mean()
