"""POST /v1/label-sets/{id}/risk-coverage: the risk-coverage curve of a label set's score on labelled images
(multipart, the same form as calibrate: ``images`` + ``labels`` or one ``label``; optional ``score`` and
``max_points``). Nothing is stored: it is the evidence behind a calibration (send the calibration images)
or a check on held-out images (send others), scored exactly as /v1/classify scores them. Admin scope and
the calibration image limit, because it costs what a calibration costs."""

from __future__ import annotations

from typing import get_args

import numpy as np
from fastapi import APIRouter, Depends, Request

from app.api.deps import LabelSetsDep, get_engine, require_admin
from app.api.errors import unprocessable
from app.api.routes.classify import EXACT_VISUAL_SOFTMAX_MAX_CLASSES, PROTOTYPE_TOPK
from app.api.routes.label_sets import _IMAGES_FORM, _labelled_images, _multipart_body, _read_form
from app.api.schemas_console import CurvePointOut, OperatingPointOut, RiskCoverageOut
from app.engine.scoring import ScoredBatch, score_batch
from app.labelsets.models import LabelSetView, TrustScoreName
from app.trust.risk_coverage import operating_point, summarise_risk_coverage

router = APIRouter(prefix="/v1/label-sets", tags=["label-sets"])
SCORES: tuple[str, ...] = get_args(TrustScoreName)
DEFAULT_POINTS, MAX_POINTS = 101, 1001
_FORM = {
    **_IMAGES_FORM,
    "score": {"type": "string", "enum": list(SCORES), "description": "default: the calibrated score"},
    "max_points": {"type": "integer", "minimum": 2, "maximum": MAX_POINTS, "default": DEFAULT_POINTS},
}


def _class_indices(view: LabelSetView, labels: list[str]) -> np.ndarray:
    position = {label: i for i, label in enumerate(view.labels)}
    unknown = sorted({label for label in labels if label not in position})
    if unknown:
        raise unprocessable(
            f"unknown class(es) for label set {view.id!r}: {[u[:60] for u in unknown[:10]]}",
            code="unknown_class",
        )
    return np.asarray([position[label] for label in labels], dtype=np.int64)


def _options(view: LabelSetView, fields: dict[str, str]) -> tuple[TrustScoreName, int]:
    score = fields.get("score") or (view.calibration.score if view.calibration else view.trust_score)
    if score not in SCORES:
        raise unprocessable(f"score must be one of {list(SCORES)}", code="invalid_score")
    try:
        max_points = int(fields.get("max_points", DEFAULT_POINTS))
    except ValueError:
        raise unprocessable("max_points must be an integer", code="invalid_max_points") from None
    if not 2 <= max_points <= MAX_POINTS:
        raise unprocessable(f"max_points must be in [2, {MAX_POINTS}]", code="invalid_max_points")
    if score != "msp" and not view.has_prototype.all():
        missing = [view.labels[i] for i in np.flatnonzero(~view.has_prototype)][:10]
        raise unprocessable(
            f"score {score!r} needs a prototype for every class; add support images for {missing} first, "
            "or ask for score 'msp'",
            code="missing_prototypes",
        )
    return score, max_points  # type: ignore[return-value]


def score_on_label_set(
    view: LabelSetView, embeddings: np.ndarray, features: np.ndarray, logit_scale: float, logit_bias: float
) -> ScoredBatch:
    """Every score of encoded images on ``view``, computed as /v1/classify computes them."""
    large = len(view.labels) > EXACT_VISUAL_SOFTMAX_MAX_CLASSES
    return score_batch(
        embeddings,
        features,
        np.asarray(view.text_embeddings),
        logit_scale=logit_scale,
        logit_bias=logit_bias,
        prototypes=np.asarray(view.prototypes) if view.has_prototype.any() else None,
        prototype_topk=view.prototype_topk(features, PROTOTYPE_TOPK) if large else None,
        has_prototype=np.asarray(view.has_prototype),
        alpha=view.alpha,
        visual_temperature=view.visual_temperature,
    )


@router.post("/{label_set_id}/risk-coverage", dependencies=[Depends(require_admin)],
             response_model=RiskCoverageOut, openapi_extra=_multipart_body(_FORM),
             summary="Risk-coverage curve of a score on labelled images (nothing is stored)")  # fmt: skip
async def risk_coverage(label_set_id: str, request: Request, service: LabelSetsDep) -> RiskCoverageOut:
    view = service.get_view(label_set_id)  # 404 before reading a large body
    max_files = service.max_calibration_images
    form = await _read_form(request, max_files)
    engine = get_engine(request)
    labels, images, fields = await _labelled_images(form, max_files, {"score", "max_points"})
    score, max_points = _options(view, fields)
    _class_indices(view, labels)  # fail before encoding
    embeddings, features = await service.encode(images)
    view = service.get_view(label_set_id)  # the version the answer is for
    score, max_points = _options(view, fields)
    classes = _class_indices(view, labels)
    scored = score_on_label_set(view, embeddings, features, engine.logit_scale, engine.logit_bias)
    conf = scored.scores[score]
    if not np.isfinite(conf).all():
        raise unprocessable(f"score {score!r} is undefined for some images", code="undefined_score")
    predicted = scored.refined_predictions if score == "trustvlm_star" else scored.predictions
    correct = (np.asarray(predicted) == classes).astype(np.int64)
    summary = summarise_risk_coverage(conf, correct, max_points)
    calibrated = None
    if view.calibration is not None and view.calibration.score == score:
        point = operating_point(conf, correct, view.calibration.threshold)
        calibrated = OperatingPointOut(
            rule=view.calibration.rule,
            target=view.calibration.target,
            threshold=point.threshold,
            coverage=point.coverage,
            risk=point.risk,
            accepted=point.accepted,
        )
    return RiskCoverageOut(
        id=view.id,
        version=view.version,
        score=score,
        n=summary.n,
        accuracy=summary.accuracy,
        aurc=summary.aurc,
        points=[CurvePointOut(**vars(point)) for point in summary.points],
        calibration=calibrated,
    )
