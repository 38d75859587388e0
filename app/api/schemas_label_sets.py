"""Pydantic schemas of the label-set API (/v1/label-sets). Risks and coverages are plain fractions.

The answer for one label set is its stored metadata (``LabelSetMeta``, the same fields, never copied by
hand) plus what the server derives from it: per-class support counts, the prototype index, and whether
the calibration applies to what is served now."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.labelsets.index import VectorIndex
from app.labelsets.models import (
    MAX_ALPHA,
    MAX_DESCRIPTION_CHARS,
    MAX_VISUAL_TEMPERATURE,
    SLUG_PATTERN,
    AdaptationConfig,
    CalibrationRecord,
    LabelSetMeta,
    LabelSetView,
)
from app.trust.scores import TrustScoreName


class LabelSetCreate(BaseModel):
    """POST /v1/label-sets. Text embeddings are computed once, now, with the server's model."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=SLUG_PATTERN, description="slug: lower-case letters, digits, '-', '_'")
    labels: list[str] = Field(min_length=1)
    templates: list[str] | None = Field(
        None, description="prompt templates with a '{}' slot (preset's default)"
    )
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)
    model: str | None = Field(None, description="must equal the server's model id when given")
    aux_encoder: str | None = Field(
        None, description="must equal the server's image-space encoder when given"
    )
    alpha: float | None = Field(None, ge=0, le=MAX_ALPHA, description="TrustVLM α (preset default)")
    visual_temperature: float | None = Field(
        None, gt=0, le=MAX_VISUAL_TEMPERATURE, description="TrustVLM* T_v (preset default)"
    )
    trust_score: TrustScoreName | None = Field(None, description="score the reject rule thresholds")
    adaptation: AdaptationConfig | None = None


class LabelSetUpdate(BaseModel):
    """PATCH /v1/label-sets/{id}. Changing α, T_v, the trust score, or an adaptation setting that moves
    cached prototypes drops the calibration."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    alpha: float | None = Field(None, ge=0, le=MAX_ALPHA)
    visual_temperature: float | None = Field(None, gt=0, le=MAX_VISUAL_TEMPERATURE)
    trust_score: TrustScoreName | None = None
    adaptation: AdaptationConfig | None = None


class ClassesAdd(BaseModel):
    """POST /v1/label-sets/{id}/classes."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] = Field(min_length=1)


class ClassInfo(BaseModel):
    label: str
    index: int
    support_images: int
    has_prototype: bool


class IndexInfo(BaseModel):
    kind: Literal["flat", "hnsw"]
    vectors: int
    dim: int

    @classmethod
    def of(cls, index: VectorIndex | None) -> IndexInfo | None:
        return None if index is None else cls(kind=index.kind, vectors=index.ntotal, dim=index.dim)


class LabelSetOut(LabelSetMeta):
    """A label set: its metadata, per-class support counts, prototype index and calibration."""

    classes: list[ClassInfo]
    calibrated: bool = Field(description="a calibration is stored (see calibration_applies)")
    calibration_applies: bool = Field(
        description="the stored calibration judges answers now (false: see calibration_problem)"
    )
    calibration_problem: str | None = Field(
        description="why the stored calibration does not apply to the scores served now"
    )
    adapted: bool = Field(description="test-time cache entries have moved the prototypes")
    prototype_index: IndexInfo | None

    @classmethod
    def build(cls, meta: LabelSetMeta, view: LabelSetView) -> LabelSetOut:
        return cls(
            **dict(meta),
            classes=[
                ClassInfo(label=label, index=i, support_images=int(n), has_prototype=bool(n > 0))
                for i, (label, n) in enumerate(zip(meta.labels, view.support_counts))
            ],
            calibrated=meta.calibration is not None,
            calibration_applies=meta.calibration is not None and view.calibration_problem is None,
            calibration_problem=view.calibration_problem,
            adapted=view.adapted,
            prototype_index=IndexInfo.of(view.index),
        )


class LabelSetSummary(BaseModel):
    id: str
    version: int
    description: str
    model: str
    classes: int
    classes_with_prototypes: int
    trust_score: TrustScoreName
    calibrated: bool
    updated_at: str


class UnavailableLabelSet(BaseModel):
    id: str
    reason: str


class LabelSetList(BaseModel):
    """GET /v1/label-sets: servable label sets, and stored ones that failed to load (with why)."""

    label_sets: list[LabelSetSummary]
    unavailable: list[UnavailableLabelSet]


class SupportImagesOut(BaseModel):
    """POST /v1/label-sets/{id}/images."""

    id: str
    version: int
    added: dict[str, int] = Field(description="images added per class in this request")
    support_counts: dict[str, int] = Field(description="support images per class, after this request")
    calibration_dropped: bool = Field(description="the previous calibration no longer holds and was removed")


class CalibrateOut(BaseModel):
    """POST /v1/label-sets/{id}/calibrate."""

    id: str
    version: int
    alpha: float
    visual_temperature: float
    calibration: CalibrationRecord
