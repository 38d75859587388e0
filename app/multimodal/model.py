"""Late-fusion multimodal classifier in the shape of the ACR reference (arXiv 2603.02200, mona4399/ACR).

Per modality k: encoder → pooled embedding e_k → dropout → ẽ_k → unimodal head W_k ẽ_k.
Fused head: W_f [ẽ_1; …; ẽ_M] (concatenation of the *post-dropout* embeddings, no hidden layer).
With ``outlier_class`` every head has C+1 outputs; ``class_logits`` drops the outlier column for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from app.multimodal.encoders import create_encoder
from app.multimodal.specs import FusionSpec


@dataclass
class FusionOutput:
    """Logits of every head and the post-dropout embeddings the fused head saw, keyed by modality."""

    fused_logits: torch.Tensor
    unimodal_logits: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor]


class LateFusionClassifier(nn.Module):
    """Any number (≥ 2) of modality encoders, unimodal heads, and a concat + linear fused head."""

    def __init__(self, spec: FusionSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoders = nn.ModuleDict(
            {
                m.name: create_encoder(m.encoder, m.input_shape, m.embed_dim, **m.encoder_args)
                for m in spec.modalities
            }
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.unimodal_heads = nn.ModuleDict(
            {m.name: nn.Linear(m.embed_dim, spec.num_outputs) for m in spec.modalities}
        )
        self.fused_head = nn.Linear(sum(m.embed_dim for m in spec.modalities), spec.num_outputs)

    @property
    def modality_names(self) -> list[str]:
        return self.spec.modality_names

    def embed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Post-dropout embeddings ẽ_k for every modality (dropout is active only in training mode)."""
        missing = set(self.modality_names) - set(inputs)
        if missing:
            raise KeyError(f"missing modalities: {sorted(missing)}")
        return {name: self.dropout(self.encoders[name](inputs[name])) for name in self.modality_names}

    def fuse(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fused-head logits from (possibly synthesised) embeddings, concatenated in spec order."""
        return self.fused_head(torch.cat([embeddings[name] for name in self.modality_names], dim=1))

    def forward(self, inputs: dict[str, torch.Tensor]) -> FusionOutput:
        embeddings = self.embed(inputs)
        unimodal = {name: self.unimodal_heads[name](emb) for name, emb in embeddings.items()}
        return FusionOutput(self.fuse(embeddings), unimodal, embeddings)

    def class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Drop the outlier column (if any): scores and predictions use the C real classes only."""
        return logits[:, : self.spec.num_classes]
