"""POST /v1/label-sets/{id}/risk-coverage: the risk-coverage curve of a label set's score on labelled images
(multipart, the same form as calibrate: ``images`` + ``labels`` or one ``label``; optional ``score`` and
``max_points``). Nothing is stored: it is the evidence behind a calibration (send the calibration images)
or a check on held-out images (send others), scored by the label set's own ``LabelSetView.score`` (the
function classify and calibrate use). Admin scope and the calibration image limit, because it costs what a
calibration costs."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Request

from app.api.deps import LabelSetsDep, SettingsDep, get_engine, require_admin
from app.api.parsing import form_int
from app.api.routes.label_sets import _IMAGES_FORM, _labelled_images, _multipart_body
from app.api.schemas_console import CurvePointOut, OperatingPointOut, RiskCoverageOut
from app.errors import Conflict, InvalidInput
from app.labelsets.models import LabelSetView
from app.labelsets.support import class_indices, encode_in_spaces
from app.trust.risk_coverage import operating_point, summarise_risk_coverage
from app.trust.scores import TRUST_SCORE_NAMES, TrustScoreName, judges_refined_prediction

router = APIRouter(prefix="/v1/label-sets", tags=["label-sets"])
DEFAULT_POINTS, MAX_POINTS = 101, 1001
_FORM = {
    **_IMAGES_FORM,
    "score": {
        "type": "string",
        "enum": list(TRUST_SCORE_NAMES),
        "description": "default: the calibrated score",
    },
    "max_points": {"type": "integer", "minimum": 2, "maximum": MAX_POINTS, "default": DEFAULT_POINTS},
}


def _options(view: LabelSetView, fields: dict[str, str]) -> tuple[TrustScoreName, int]:
    score = fields.get("score") or (view.calibration.score if view.calibration else view.trust_score)
    if score not in TRUST_SCORE_NAMES:
        raise InvalidInput(f"score must be one of {list(TRUST_SCORE_NAMES)}", code="invalid_score")
    max_points = form_int(fields.get("max_points", str(DEFAULT_POINTS)), "max_points")
    if not 2 <= max_points <= MAX_POINTS:
        raise InvalidInput(f"max_points must be in [2, {MAX_POINTS}]", code="invalid_max_points")
    if score != "msp" and not view.has_prototype.all():
        missing = [view.labels[i] for i in np.flatnonzero(~view.has_prototype)][:10]
        raise InvalidInput(
            f"score {score!r} needs a prototype for every class; add support images for {missing} first, "
            "or ask for score 'msp'",
            code="missing_prototypes",
        )
    return score, max_points


@router.post("/{label_set_id}/risk-coverage", dependencies=[Depends(require_admin)],
             response_model=RiskCoverageOut, openapi_extra=_multipart_body(_FORM),
             summary="Risk-coverage curve of a score on labelled images (nothing is stored)")  # fmt: skip
async def risk_coverage(
    label_set_id: str, request: Request, service: LabelSetsDep, settings: SettingsDep
) -> RiskCoverageOut:
    repo = service.repository
    view = repo.get_view(label_set_id)  # 404 before reading a large body
    labels, images, fields = await _labelled_images(
        request, settings, settings.max_calibration_images, {"score", "max_points"}
    )
    engine = get_engine(request)
    _options(view, fields)
    class_indices(repo.get_meta(label_set_id), labels)  # fail before encoding
    asked = view  # queries as the label set's prototypes: its aspect policy and image space
    embeddings, spaces = await encode_in_spaces(engine, images, asked.policy, (asked.space,))
    view = repo.get_view(label_set_id)  # the version the answer is for
    if (view.policy, view.space) != (asked.policy, asked.space):
        raise Conflict("the label set's aspect policy or image space changed meanwhile; retry")
    features = spaces[view.space]
    score, max_points = _options(view, fields)
    classes = class_indices(repo.get_meta(label_set_id), labels)
    scored = view.score(embeddings, features, logit_scale=engine.logit_scale, logit_bias=engine.logit_bias)
    conf = scored.scores[score]
    if not np.isfinite(conf).all():
        raise InvalidInput(f"score {score!r} is undefined for some images", code="undefined_score")
    refined = judges_refined_prediction(score) and scored.refined_predictions is not None
    predicted = scored.refined_predictions if refined else scored.predictions
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
