"""Label-set data model: the persisted metadata, the calibration record, the reject decision and the
immutable ``LabelSetView`` snapshot that classification consumes (docs/ARCHITECTURE.md, "Engine ↔ label
sets")."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.trust.conformal import ConformalThreshold
from app.trust.monitoring import MonitorReference
from app.trust.scores import PrototypeTopK

if TYPE_CHECKING:
    from app.labelsets.index import VectorIndex

SLUG_PATTERN = r"^[a-z0-9][a-z0-9\-_]{0,63}$"
_SLUG_RE = re.compile(SLUG_PATTERN)

TrustScoreName = Literal["trustvlm", "trustvlm_star", "msp"]
CalibrationRule = Literal["target_risk", "target_coverage"]


def is_valid_slug(value: str) -> bool:
    """True when ``value`` is a label-set id: lower-case letters, digits, '-' and '_', 1–64 chars."""
    return bool(_SLUG_RE.fullmatch(value))


def utc_now() -> str:
    """Current UTC time as an ISO-8601 string (second resolution)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class AdaptationConfig(BaseModel):
    """Opt-in test-time prototype growth (in the spirit of TDA, Karmanov et al., CVPR 2024).

    A prediction whose trust score is at least ``min_score`` adds its image feature to a per-class cache of
    at most ``max_per_class`` entries (lowest-score entry evicted first). The cache can move a prototype
    only by a bounded amount: its total weight in the prototype is capped at ``max_weight``.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    min_score: float = Field(1.5, description="trust score a prediction needs to enter the cache")
    max_per_class: int = Field(16, ge=1, le=1024)
    max_weight: float = Field(
        0.3, gt=0.0, lt=0.5, description="cap on the cache share of a prototype (< 0.5)"
    )


class CalibrationRecord(BaseModel):
    """A calibrated acceptance threshold for one label set's trust score (metrics.md, selective
    classification). Accept a prediction when ``score >= threshold``."""

    model_config = ConfigDict(extra="forbid")
    rule: CalibrationRule
    score: TrustScoreName
    threshold: float = Field(description="accept when score >= threshold")
    target: float = Field(description="target selective risk (target_risk) or coverage (target_coverage)")
    delta: float | None = Field(None, description="confidence level of the risk guarantee")
    guarantee: str
    coverage: float = Field(description="fraction of calibration images accepted (a fraction, not %)")
    risk: float = Field(description="error rate among accepted calibration images")
    risk_upper_bound: float | None = None
    n: int = Field(description="calibration images used to pick the threshold")
    n_tuning: int = Field(0, description="calibration images used only to tune alpha / T_v")
    alpha: float
    visual_temperature: float
    label_set_version: int = Field(description="label-set version the threshold was computed for")
    calibrated_at: str = Field(default_factory=utc_now)
    conformal: ConformalThreshold | None = Field(
        None, description="split-conformal threshold for prediction sets, fitted on the same images"
    )
    monitor: MonitorReference | None = Field(
        None, description="calibration-time score distribution live traffic is compared with"
    )

    def identity(self) -> str:
        """Names this calibration (a new one restarts the live monitor's window)."""
        return f"{self.label_set_version}@{self.calibrated_at}"


class Decision(BaseModel):
    """The reject decision attached to every classify answer on a label set."""

    model_config = ConfigDict(extra="forbid")
    accept: bool | None = Field(description="null when the label set is not calibrated")
    threshold: float | None = None
    rule: CalibrationRule | None = None
    guarantee: str | None = None
    calibrated: bool
    score: TrustScoreName | None = None
    note: str | None = None


class LabelSetMeta(BaseModel):
    """Everything about a label set except its vectors; stored as JSON in the manifest."""

    model_config = ConfigDict(extra="forbid")
    id: str
    description: str = ""
    version: int = Field(ge=1)
    labels: list[str]
    templates: list[str]
    model: str = Field(description="engine model id the text embeddings were computed with")
    aux_encoder: str = Field(description="image-space encoder id the prototypes live in")
    embedding_dim: int = Field(ge=1)
    feature_dim: int | None = Field(None, ge=1, description="prototype dim, known after the first image")
    alpha: float = 1.0
    visual_temperature: float = Field(0.01, gt=0)
    trust_score: TrustScoreName = "trustvlm"
    calibration: CalibrationRecord | None = None
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    created_at: str = Field(default_factory=utc_now)
    updated_at: str = Field(default_factory=utc_now)

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not is_valid_slug(v):
            raise ValueError(f"label-set id {v!r} must match {SLUG_PATTERN}")
        return v

    @model_validator(mode="after")
    def _labels_unique(self) -> LabelSetMeta:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self


@dataclass(frozen=True, eq=False)
class LabelSetView:
    """Immutable snapshot of one label-set version, everything classify needs.

    Arrays are read-only numpy: ``text_embeddings`` (C,D) normalised, ``prototypes`` (C,F) normalised
    (zero rows where ``has_prototype`` is False), ``support_counts`` (C,). ``index`` searches the
    prototypes (inner product = cosine) and returns class indices; ``text_index`` does the same over the
    text embeddings (for very large label sets). ``adapted`` is True when test-time cache entries have
    moved the prototypes since the support images were registered.
    """

    id: str
    version: int
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    model: str
    aux_encoder: str
    text_embeddings: np.ndarray
    prototypes: np.ndarray
    has_prototype: np.ndarray
    support_counts: np.ndarray
    index: VectorIndex | None
    text_index: VectorIndex | None
    alpha: float
    visual_temperature: float
    trust_score: TrustScoreName
    calibration: CalibrationRecord | None
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    adapted: bool = False

    def prototype_topk(self, aux_features: np.ndarray, k: int = 64) -> PrototypeTopK | None:
        """Nearest prototypes of raw image features via the FAISS index, for TrustVLM*'s visual softmax on
        large label sets (pass as ``trustvlm_scores(..., prototype_topk=...)``); None without prototypes.
        The approximation is stated in ``app.trust.scores.visual_probs_from_topk``."""
        if self.index is None:
            return None
        feats = np.asarray(aux_features, dtype=np.float32)
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        sims, ids = self.index.search(feats, min(k, self.index.ntotal))
        return PrototypeTopK(indices=ids, sims=np.where(ids < 0, 0.0, sims))

    def text_topk(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k labels by cosine to normalised joint-space image embeddings (sims, class ids), for very
        large label sets; None when the label set is too small to have a text index."""
        if self.text_index is None:
            return None
        return self.text_index.search(
            np.asarray(embeddings, dtype=np.float32), min(k, self.text_index.ntotal)
        )

    def decide(self, score: float) -> Decision:
        """Reject decision for one trust score of this label set's ``trust_score`` kind."""
        cal = self.calibration
        if cal is None:
            return Decision(
                accept=None,
                calibrated=False,
                score=self.trust_score,
                note="label set not calibrated: no reject rule, no guarantee",
            )
        note = None
        if self.adapted:
            note = (
                "prototypes were adapted at test time after calibration; the guarantee was computed "
                "for the calibration-time prototypes"
            )
        if score is None or not math.isfinite(score):
            accept = False
            note = note or "trust score undefined (predicted class has no prototype): rejected"
        else:
            accept = bool(score >= cal.threshold)
        return Decision(
            accept=accept,
            threshold=cal.threshold,
            rule=cal.rule,
            guarantee=cal.guarantee,
            calibrated=True,
            score=cal.score,
            note=note,
        )

    def decide_batch(self, scores: np.ndarray) -> list[Decision]:
        """Decisions for a batch of trust scores."""
        return [self.decide(float(s)) for s in np.asarray(scores, dtype=np.float64).ravel()]
