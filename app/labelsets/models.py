"""Label-set data model: the persisted metadata, the calibration record (and what it was computed from),
and the immutable ``LabelSetView`` snapshot that classification and calibration score with
(docs/ARCHITECTURE.md, "Engine ↔ label sets")."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.engine.scoring import ScoredBatch, score_batch
from app.labelsets.selection import ImageSpaceSetting, LabelSetSelection, PreprocessSetting, SelectionMode
from app.trust.calibration import CalibrationResult, Decision
from app.trust.conformal import ConformalThreshold
from app.trust.monitoring import MonitorReference
from app.trust.scores import (
    DEFAULT_ALPHA,
    DEFAULT_VISUAL_TEMPERATURE,
    PrototypeTopK,
    TrustScoreName,
    judges_refined_prediction,
)
from app.vlm.preprocessing import AspectPolicy

if TYPE_CHECKING:
    from app.labelsets.index import VectorIndex

SLUG_PATTERN = r"^[a-z0-9][a-z0-9\-_]{0,63}$"
_SLUG_RE = re.compile(SLUG_PATTERN)

# Bounds of what a client may set (the API's schemas and label-set import check the same).
MAX_ALPHA = 100.0
MAX_VISUAL_TEMPERATURE = 10.0
MAX_DESCRIPTION_CHARS = 2000

# Array and blob names inside a stored label set: text embeddings, per-class prototype sums and support
# counts, the test-time adaptation cache (class, raw feature, score per entry), the FAISS prototype index.
TEXT = "text_embeddings"
SUMS = "prototype_sums"
COUNTS = "prototype_counts"
CACHE_CLASS = "cache_class"
CACHE_FEATURES = "cache_features"
CACHE_SCORES = "cache_scores"
CACHE_ARRAYS = (CACHE_CLASS, CACHE_FEATURES, CACHE_SCORES)
PROTOTYPE_INDEX = "prototype_index"

# Above this many classes TrustVLM*'s visual softmax uses the FAISS top-k prototypes (T_v = 0.01 leaves
# negligible mass outside them; see app.trust.scores.visual_probs_from_topk) — in classify AND calibrate.
EXACT_VISUAL_SOFTMAX_MAX_CLASSES = 1024
PROTOTYPE_TOPK = 64


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


class TowerNumerics(BaseModel):
    """Where one image-path model tower computed: runtime, weight precision, arithmetic dtype, device."""

    model_config = ConfigDict(extra="forbid")
    runtime: str = Field(description="the runtime the tower ran on, e.g. torch or onnxruntime")
    precision: str = Field(description="weight precision, e.g. fp32 or int8")
    dtype: str = Field(description="what the arithmetic ran in, e.g. float32 or int8")
    device: str = Field(description="device kind: cpu or cuda")


class CalibrationBasis(BaseModel):
    """What a label set's decision score is computed from, besides α, T_v and the score's name: the
    arrays (text embeddings, prototypes after any test-time adaptation, which classes have one), the
    model's logit scale and bias, and the numerics of every tower that runs per request (the text tower's
    output is stored in the arrays)."""

    model_config = ConfigDict(extra="forbid")
    arrays_sha256: str = Field(
        description="sha256 of the arrays the scores read (text embeddings, prototypes after adaptation)"
    )
    logit_scale: float = Field(description="the model's logit scale when the scores were computed")
    logit_bias: float = Field(description="the model's logit bias when the scores were computed")
    towers: dict[str, TowerNumerics] = Field(
        description="numerics of every tower that runs per request, by tower name"
    )


class TuningEvidence(BaseModel):
    """How calibration chose the label set's settings before the threshold: which were tuned, on how many
    held-out images, and the evidence (every grid point with its AURC). The place where a later selection
    step (image space, preprocessing policy) records its choice too."""

    model_config = ConfigDict(extra="forbid")
    tuned: list[str] = Field(description="the settings this calibration chose, e.g. ['alpha']")
    n: int = Field(description="calibration images used only for tuning")
    objective: str = Field("aurc", description="what the choice minimised, on the tuning images")
    grid: list[dict[str, float]] = Field(default_factory=list, description="every point tried")


class CalibrationRecord(CalibrationResult):
    """A calibrated acceptance threshold for one label set's trust score (metrics.md, selective
    classification): the rule's result, the settings it was computed for, and ``basis``, what the
    decision score was computed from. Accept a prediction when ``score >= threshold``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    score: TrustScoreName = Field(description="the trust score the threshold applies to")
    n_tuning: int = Field(
        0,
        description="calibration images used only for the selection (aspect policy, image space, α), "
        "disjoint from the n the threshold and the conformal sets were fitted on",
    )
    tuning: TuningEvidence | None = Field(None, description="records before issue 14: the half/half α tuning")
    selection: LabelSetSelection | None = Field(
        None,
        description="policy, image space and α chosen on the n_tuning selection images (every candidate's "
        "evidence)",
    )
    alpha: float = Field(description="α of the TrustVLM score the threshold was computed with")
    visual_temperature: float = Field(description="T_v of the TrustVLM score the threshold was computed with")
    label_set_version: int = Field(description="label-set version the threshold was computed for")
    basis: CalibrationBasis | None = Field(
        None, description="what the scores were computed from (null: recorded before this was kept)"
    )
    calibrated_at: str = Field(default_factory=utc_now, description="when, UTC ISO-8601")
    conformal: ConformalThreshold | None = Field(
        None, description="split-conformal threshold for prediction sets, fitted on the same images"
    )
    monitor: MonitorReference | None = Field(
        None, description="calibration-time score distribution live traffic is compared with"
    )

    def identity(self) -> str:
        """Names this calibration (a new one restarts the live monitor's window)."""
        return f"{self.label_set_version}@{self.calibrated_at}"

    @model_validator(mode="before")
    @classmethod
    def _accepted_count(cls, data: Any) -> Any:
        """Records stored before ``n_accepted`` was kept: accepted = coverage · n (exact by construction)."""
        if isinstance(data, dict) and "n_accepted" not in data and {"coverage", "n"} <= data.keys():
            return {**data, "n_accepted": round(data["coverage"] * data["n"])}
        return data


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
    alpha: float = DEFAULT_ALPHA
    visual_temperature: float = Field(DEFAULT_VISUAL_TEMPERATURE, gt=0)
    trust_score: TrustScoreName = "trustvlm"
    preprocess: PreprocessSetting = Field(
        "crop", description="aspect policy setting: crop | letterbox | auto (chosen on evidence)"
    )
    policy: AspectPolicy = Field(
        "crop", description="the aspect policy prototypes and queries use now (auto: the chosen one)"
    )
    image_space: ImageSpaceSetting = Field(
        "own",
        description="image space setting: own (the model's), independent (the preset's separate network, "
        "e.g. EfficientNet-Lite0 beside the offline Lite2) or auto (chosen on evidence)",
    )
    space: str = Field(
        "own", description="the image space prototypes and queries use now (auto: the chosen one)"
    )
    selection_mode: SelectionMode = Field(
        "fixed", description="auto: α (0 = MSP) chosen on support / calibration evidence; fixed: as set"
    )
    selection: LabelSetSelection | None = Field(
        None, description="how policy and α were chosen, with every candidate's evidence"
    )
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


def uncalibrated_decision(score: str, note: str, applies_to_refined: bool = False) -> Decision:
    """A decision that pretends none: no calibrated rule applies."""
    applies_to = "refined_prediction" if applies_to_refined else "prediction"
    return Decision(accept=None, score=score, calibrated=False, applies_to=applies_to, note=note)


@dataclass(frozen=True, eq=False)
class LabelSetView:
    """Immutable snapshot of one label-set version, everything classify and calibrate need.

    Arrays are read-only numpy: ``text_embeddings`` (C,D) normalised, ``prototypes`` (C,F) normalised
    (zero rows where ``has_prototype`` is False), ``support_counts`` (C,). ``index`` searches the
    prototypes (inner product = cosine) and returns class indices. ``adapted`` is True when test-time
    cache entries have moved the prototypes since the support images were registered. ``basis`` is what
    the decision score is computed from now; ``calibration_problem`` says why the stored calibration does
    not apply to it (None when it does, or when there is none).
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
    alpha: float
    visual_temperature: float
    trust_score: TrustScoreName
    calibration: CalibrationRecord | None
    basis: CalibrationBasis | None = None
    calibration_problem: str | None = None
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    adapted: bool = False
    policy: AspectPolicy = "crop"  # the aspect policy queries must be encoded with (as the prototypes)
    selection_evidence: str = "fixed"  # support-loo | calibration | fixed
    space: str = "own"  # the image space queries' features must come from (as the prototypes')
    space_encoder: str = ""  # what that space is (e.g. "lite0:efficientnet_lite:lite0")

    def prototype_topk(self, aux_features: np.ndarray, k: int = PROTOTYPE_TOPK) -> PrototypeTopK | None:
        """Nearest prototypes of raw image features via the FAISS index, for TrustVLM*'s visual softmax on
        large label sets; None without prototypes. The approximation is stated in
        ``app.trust.scores.visual_probs_from_topk``."""
        if self.index is None:
            return None
        feats = np.asarray(aux_features, dtype=np.float32)
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        sims, ids = self.index.search(feats, min(k, self.index.ntotal))
        return PrototypeTopK(indices=ids, sims=np.where(ids < 0, 0.0, sims))

    def serving_topk(self, aux_features: np.ndarray) -> PrototypeTopK | None:
        """The top-k prototypes TrustVLM*'s visual softmax uses for this label set (None: the exact
        softmax over every class, at most ``EXACT_VISUAL_SOFTMAX_MAX_CLASSES`` classes)."""
        if len(self.labels) <= EXACT_VISUAL_SOFTMAX_MAX_CLASSES:
            return None
        return self.prototype_topk(aux_features)

    def score(
        self,
        embeddings: np.ndarray,
        aux_features: np.ndarray,
        *,
        logit_scale: float,
        logit_bias: float,
        alpha: float | None = None,
        visual_temperature: float | None = None,
    ) -> ScoredBatch:
        """Every score of a batch of images on this label set — the ONE scoring function of classify and
        calibration (the same top-k approximation for large label sets in both). ``alpha`` /
        ``visual_temperature`` default to the label set's own (calibration tries others)."""
        has_any = bool(self.has_prototype.any())
        return score_batch(
            embeddings,
            aux_features,
            np.asarray(self.text_embeddings),
            logit_scale=logit_scale,
            logit_bias=logit_bias,
            prototypes=np.asarray(self.prototypes) if has_any else None,
            has_prototype=np.asarray(self.has_prototype),
            alpha=self.alpha if alpha is None else alpha,
            visual_temperature=self.visual_temperature if visual_temperature is None else visual_temperature,
            prototype_topk=self.serving_topk(aux_features) if has_any else None,
        )

    def decide(self, score: float | None) -> Decision:
        """Reject decision for one trust score of this label set's ``trust_score`` kind."""
        refined = judges_refined_prediction(self.trust_score)
        cal = self.calibration
        if cal is None:
            return uncalibrated_decision(
                self.trust_score, "label set not calibrated: no reject rule, no guarantee", refined
            )
        if self.calibration_problem is not None:
            return uncalibrated_decision(
                self.trust_score,
                f"the label set's calibration does not apply: {self.calibration_problem}; recalibrate",
                refined,
            )
        note = None
        if score is None or not math.isfinite(score):
            accept = False
            note = "trust score undefined (predicted class has no prototype): rejected"
        else:
            accept = bool(score >= cal.threshold)
        return Decision(
            accept=accept,
            threshold=cal.threshold,
            rule=cal.rule,
            guarantee=cal.guarantee,
            calibrated=True,
            score=cal.score,
            applies_to="refined_prediction" if refined else "prediction",
            note=note,
        )
