"""Pydantic schemas of the label-set API (/v1/label-sets). Risks and coverages are plain fractions.

The answer for one label set is its stored metadata (``LabelSetMeta``, the same fields, never copied by
hand) plus what the server derives from it: per-class support counts, the prototype index, and whether
the calibration applies to what is served now."""

from __future__ import annotations

import math
from datetime import UTC, datetime
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
from app.labelsets.selection import ImageSpaceSetting, PreprocessSetting, SelectionMode
from app.trust.monitoring import MonitorSettings, MonitorSnapshot
from app.trust.scores import TrustScoreName
from app.vlm.preprocessing import AspectPolicy


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
    preprocess: PreprocessSetting | None = Field(
        None,
        description="aspect policy of support and query images: crop, letterbox (pad to a square on white), "
        "or auto (both encoded; chosen on support images, then at calibrate). Preset default",
    )
    selection_mode: SelectionMode | None = Field(
        None,
        description="auto: α (0 = plain MSP) chosen on support (leave-one-out) and calibration evidence; "
        "fixed: α as given. Default: the preset's, fixed when alpha is given",
    )
    image_space: ImageSpaceSetting | None = Field(
        None,
        description="image space of prototypes and queries: own (the model's), independent (the preset's "
        "separate network; one more forward per classify) or auto (both encoded; chosen on support images, "
        "then at calibrate). Default: auto when the model has an independent space and selection_mode is "
        "auto, else own",
    )


class LabelSetUpdate(BaseModel):
    """PATCH /v1/label-sets/{id}. Changing α, T_v, the trust score, or an adaptation setting that moves
    cached prototypes drops the calibration."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    alpha: float | None = Field(None, ge=0, le=MAX_ALPHA)
    visual_temperature: float | None = Field(None, gt=0, le=MAX_VISUAL_TEMPERATURE)
    trust_score: TrustScoreName | None = None
    adaptation: AdaptationConfig | None = None
    selection_mode: SelectionMode | None = Field(
        None, description="auto: α chosen on evidence from now on; fixed: keep α (a given alpha fixes it)"
    )
    preprocess: PreprocessSetting | None = Field(
        None,
        description="aspect policy setting; support images are not re-encoded, so a change needs their "
        "kept encodings under the new policy (409 otherwise); drops the calibration",
    )
    image_space: ImageSpaceSetting | None = Field(
        None,
        description="image space setting; support images are not re-encoded, so a change needs their kept "
        "features in the new space (409 otherwise); drops the calibration",
    )


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
    image_space_encoder: str = Field(
        "", description="the network behind `space` (the model's own encoder, or the independent one)"
    )

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
            image_space_encoder=view.space_encoder,
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
    version: int = Field(description="the label set's version after this calibration")
    alpha: float = Field(description="α the label set serves with now (a selection may have changed it)")
    visual_temperature: float = Field(description="T_v the label set serves with (never tuned)")
    preprocess: AspectPolicy = Field(description="aspect policy the label set serves with now")
    image_space: str = Field("own", description="image space the label set serves with now")
    calibration: CalibrationRecord = Field(description="the stored calibration record")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class MonitorWindow(BaseModel):
    """The live window the numbers were computed on."""

    samples: int = Field(description="answers in the window")
    undefined_scores: int = Field(description="answers whose trust score was undefined (rejected)")
    max_samples: int
    max_age_s: float
    min_samples: int = Field(description="answers needed before rates, ATC and drift are reported")
    start: str | None = Field(description="time of the oldest answer in the window (UTC)")
    end: str | None = Field(description="time of the newest answer in the window (UTC)")


class MonitorDrift(BaseModel):
    psi: float | None = Field(description="population stability index over calibration deciles")
    ks: float | None = Field(description="two-sample Kolmogorov-Smirnov statistic D")


class MonitorOut(BaseModel):
    """GET /v1/label-sets/{id}/monitor: the numbers /metrics exports for this label set (this replica)."""

    id: str
    version: int
    calibrated: bool
    score: str | None = Field(description="the decision score being watched")
    window: MonitorWindow
    live_acceptance_rate: float | None
    calibration_coverage: float | None
    estimated_accuracy: float | None = Field(
        description="ATC estimate of the window's accuracy, no labels needed (Garg et al., ICLR 2022)"
    )
    calibration_accuracy: float | None
    drift: MonitorDrift
    note: str | None = None

    @classmethod
    def of(cls, view: LabelSetView, snap: MonitorSnapshot | None, settings: MonitorSettings) -> MonitorOut:
        cal = view.calibration
        ref = cal.monitor if cal is not None else None
        note = None
        if cal is None:
            note = "not calibrated: nothing to compare live traffic with"
        elif view.calibration_problem is not None:
            note = f"the calibration does not apply: {view.calibration_problem}; recalibrate"
            ref, snap = None, None
        elif ref is None:
            note = "calibrated before monitoring existed: recalibrate to monitor this label set"
        elif snap is None or snap.samples == 0:
            note = "no answers in the window yet"
        elif not snap.enough:
            note = f"fewer than {settings.min_samples} answers in the window: rates and drift not reported"
        enough = snap is not None and snap.enough

        def live(value: float | None) -> float | None:
            return _finite(value) if enough and value is not None else None

        return cls(
            id=view.id,
            version=view.version,
            calibrated=cal is not None,
            score=ref.score if ref is not None else None,
            window=MonitorWindow(
                samples=snap.samples if snap else 0,
                undefined_scores=snap.undefined_scores if snap else 0,
                max_samples=settings.window_size,
                max_age_s=settings.window_seconds,
                min_samples=settings.min_samples,
                start=_iso(snap.window_start) if snap else None,
                end=_iso(snap.window_end) if snap else None,
            ),
            live_acceptance_rate=live(snap.acceptance_rate if snap else None),
            calibration_coverage=ref.calibration_coverage if ref is not None else None,
            estimated_accuracy=live(snap.estimated_accuracy if snap else None),
            calibration_accuracy=ref.calibration_accuracy if ref is not None else None,
            drift=MonitorDrift(psi=live(snap.psi if snap else None), ks=live(snap.ks if snap else None)),
            note=note,
        )
