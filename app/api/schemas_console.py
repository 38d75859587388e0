"""Pydantic schemas of the endpoints the web console and the ``trustserve label-sets`` commands added:
what a key may do (/v1/access), support images from an archive of class folders, and the risk-coverage
evidence of a label set's score on labelled images. Risks and coverages are plain fractions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.api.schemas_label_sets import SupportImagesOut
from app.trust.calibration import CalibrationRule
from app.trust.scores import TrustScoreName


class AccessOut(BaseModel):
    """GET /v1/access: what the presented API key (or no key) may do on this server."""

    keys_required: bool = Field(description="API keys are configured on this server")
    scope: Literal["read", "admin"] | None = Field(
        description="the scope of the presented key; without keys configured, what everyone gets"
    )
    can_write: bool = Field(description="label-set changes (create, import, delete, calibrate) are allowed")
    docs_public: bool = Field(description="/docs, /redoc and /openapi.json answer without a key")
    note: str | None = None


class SupportArchiveOut(SupportImagesOut):
    """POST /v1/label-sets/{id}/images/archive."""

    skipped: int = Field(description="archive entries that are not images in a class folder (hidden, other)")
    skipped_names: list[str] = Field(description="the first skipped entries, by name")


class CurvePointOut(BaseModel):
    coverage: float = Field(description="fraction of images accepted")
    risk: float = Field(description="error rate among the accepted images")
    threshold: float = Field(description="the score of the last accepted image")


class OperatingPointOut(BaseModel):
    """The label set's calibrated rule applied to these images."""

    rule: CalibrationRule
    target: float
    threshold: float
    coverage: float
    risk: float | None = Field(description="null when no image is accepted")
    accepted: int


class RiskCoverageOut(BaseModel):
    """POST /v1/label-sets/{id}/risk-coverage: the risk-coverage curve of one score on labelled images."""

    id: str
    version: int
    score: TrustScoreName
    n: int = Field(description="labelled images scored")
    accuracy: float = Field(description="accuracy of the prediction the score judges, at full coverage")
    aurc: float = Field(description="area under the risk-coverage curve (lower is better)")
    points: list[CurvePointOut] = Field(description="the curve, thinned to at most max_points")
    calibration: OperatingPointOut | None = Field(
        description="the calibrated threshold's coverage and risk on these images (when it is for this score)"
    )
