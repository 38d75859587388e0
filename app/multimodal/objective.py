"""The training objective: L = L_cls + λ_acl·L_acl + λ_mfs·L_mfs + γ·L_mix, each term switchable.

ACR (arXiv 2603.02200) is ``acl=True, mfs=True``; the ablation variants switch terms off; Feature Mixing
(arXiv 2505.16985) is ``feature_mixing=True``. MFS needs the model's extra outlier class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.multimodal.losses import (
    adaptive_confidence_loss,
    entropy_maximisation_loss,
    multihead_cross_entropy,
    soft_outlier_cross_entropy,
)
from app.multimodal.model import LateFusionClassifier
from app.multimodal.synthesis import (
    choose_pair,
    mix_features,
    sample_mix_plan,
    sample_swap_plan,
    scaled_n_range,
    swap_blocks,
)


class LossConfig(BaseModel):
    """Which loss terms are on, and their weights (defaults: the ACR reference code / paper)."""

    model_config = ConfigDict(extra="forbid")
    acl: bool = False
    lambda_acl: float = Field(2.0, ge=0)
    acl_detach_unimodal: bool = Field(False, description="not in the paper: ACL only raises the fused MSP")
    mfs: bool = False
    lambda_mfs: float = Field(1.0, ge=0)
    n_min: int = Field(32, ge=1, description="MFS: smallest swapped block (clipped to the embedding size)")
    n_max: int = Field(256, ge=1, description="MFS: largest swapped block; λ = n / n_max")
    n_reference_dim: int | None = Field(
        None,
        ge=1,
        description="MFS: n_min/n_max are given for embeddings of this width and rescaled to the narrower "
        "embedding of the swapped pair (None: absolute block sizes; λ keeps n_max when a block is clipped)",
    )
    feature_mixing: bool = False
    gamma_mix: float = Field(0.5, ge=0, description="Feature Mixing: weight of the entropy objective")
    mix_dims: int = Field(32, ge=1, description="Feature Mixing: N dimensions exchanged per modality")
    mix_contiguous: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> LossConfig:
        if self.n_min > self.n_max:
            raise ValueError(f"n_min ({self.n_min}) must be <= n_max ({self.n_max})")
        return self

    def mfs_n_range(self, dim_a: int, dim_b: int) -> tuple[int, int]:
        """The (n_min, n_max) MFS draws from for this modality pair: as configured, or rescaled from
        ``n_reference_dim`` to min(D_a, D_b) (``scaled_n_range``)."""
        if self.n_reference_dim is None:
            return self.n_min, self.n_max
        return scaled_n_range(self.n_min, self.n_max, self.n_reference_dim, min(dim_a, dim_b))

    @property
    def needs_outlier_class(self) -> bool:
        return self.mfs

    @classmethod
    def variant(cls, name: str, **overrides: object) -> LossConfig:
        """Named ablation variants: baseline, acl, mfs, acr, feature_mixing."""
        switches = {
            "baseline": {},
            "acl": {"acl": True},
            "mfs": {"mfs": True},
            "acr": {"acl": True, "mfs": True},
            "feature_mixing": {"feature_mixing": True},
        }
        if name not in switches:
            raise ValueError(f"unknown loss variant {name!r}; known: {sorted(switches)}")
        return cls(**{**switches[name], **overrides})


VARIANTS: tuple[str, ...] = ("baseline", "acl", "mfs", "acr", "feature_mixing")


@dataclass
class LossBreakdown:
    """The total loss and each switched-on term (detached floats, for logging)."""

    total: torch.Tensor
    terms: dict[str, float]
    fused_logits: torch.Tensor


def training_loss(
    model: LateFusionClassifier,
    inputs: dict[str, torch.Tensor],
    targets: torch.Tensor,
    config: LossConfig,
    generator: torch.Generator | None = None,
) -> LossBreakdown:
    """Forward the batch, synthesise outliers from the post-dropout embeddings, and sum the terms."""
    if config.mfs and not model.spec.outlier_class:
        raise ValueError("MFS needs a model built with outlier_class=True")
    out = model(inputs)
    unimodal = list(out.unimodal_logits.values())
    loss_cls = multihead_cross_entropy(out.fused_logits, unimodal, targets)
    total = loss_cls
    terms = {"cls": loss_cls.item()}
    dims = {m.name: m.embed_dim for m in model.spec.modalities}

    if config.acl:
        loss_acl = adaptive_confidence_loss(out.fused_logits, unimodal, config.acl_detach_unimodal)
        total = total + config.lambda_acl * loss_acl
        terms["acl"] = loss_acl.item()

    if config.mfs:
        a, b = choose_pair(model.modality_names, generator)
        n_min, n_max = config.mfs_n_range(dims[a], dims[b])
        plan = sample_swap_plan(dims[a], dims[b], n_min, n_max, generator)
        swapped = dict(out.embeddings)
        swapped[a], swapped[b] = swap_blocks(out.embeddings[a], out.embeddings[b], plan)
        loss_mfs = soft_outlier_cross_entropy(
            model.fuse(swapped), targets, plan.outlier_weight, model.spec.num_classes
        )
        total = total + config.lambda_mfs * loss_mfs
        terms["mfs"] = loss_mfs.item()

    if config.feature_mixing:
        a, b = choose_pair(model.modality_names, generator)
        mix = sample_mix_plan(dims[a], dims[b], config.mix_dims, config.mix_contiguous, generator)
        mixed = dict(out.embeddings)
        mixed[a], mixed[b] = mix_features(out.embeddings[a], out.embeddings[b], mix)
        loss_mix = entropy_maximisation_loss(model.class_logits(model.fuse(mixed)))
        total = total + config.gamma_mix * loss_mix
        terms["mix"] = loss_mix.item()

    terms["total"] = total.item()
    return LossBreakdown(total, terms, out.fused_logits)
