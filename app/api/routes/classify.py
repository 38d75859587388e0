"""POST /v1/classify: zero-shot prediction + TrustVLM confidence + calibrated decision, per image.

One request: parse (JSON or multipart) → resolve the labels (a label set, or validated ad-hoc labels) →
encode (the engine: images, and the text of ad-hoc labels) → score (``LabelSetView.score``, the function
calibration uses, or ``score_batch``) → respond. The engine emits its own stage, batch and overload
metrics; the answers' trust scores and decisions are observed once, here, where they are made.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from app.api.deps import EngineDep, SettingsDep, get_label_sets, require_read
from app.api.disconnect import unless_disconnected
from app.api.parsing import (
    JSON,
    MULTIPART,
    decode_base64_image,
    form_files,
    form_int,
    form_texts,
    json_list,
    media_type,
    read_form,
    read_json,
    string_list,
    validation_error,
)
from app.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ImageResult,
    LabelProbability,
    LabelSetRef,
    PredictionSet,
    TrustInfo,
)
from app.config import Settings
from app.engine.engine import ClassificationEngine, EncodedImages
from app.engine.prompts import validate_labels, validate_templates
from app.engine.scoring import ScoredBatch, score_batch
from app.errors import Conflict, InvalidInput, UnsupportedMedia
from app.labelsets.live_trust import prediction_sets_for, record_live_answers
from app.labelsets.models import LabelSetView, uncalibrated_decision
from app.labelsets.service import LabelSetService
from app.trust.scores import judges_refined_prediction

router = APIRouter(tags=["classify"])

ADHOC = "_adhoc"  # the label_set label of ad-hoc requests in the metrics
FORM_FIELDS = {"labels", "label_set", "templates", "top_k"}

_MULTIPART_SCHEMA = {
    "type": "object",
    "properties": {
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "one or more image files (repeat the field)",
        },
        "labels": {"type": "string", "description": 'JSON list of labels, e.g. ["espresso", "a cat"]'},
        "label_set": {"type": "string"},
        "templates": {"type": "string", "description": "JSON list of prompt templates"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 100},
    },
    "required": ["image"],
}

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyRequest.model_json_schema()},  # inline: no dangling $ref
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


# -- parse -----------------------------------------------------------------------------------------
async def _read_multipart(request: Request, settings: Settings) -> tuple[ClassifyRequest, list[bytes]]:
    form = await read_form(request, settings, max_files=settings.max_images_per_request + 1, max_fields=64)
    files = await form_files(form, ("image", "images"))
    texts = form_texts(form, FORM_FIELDS)
    labels = string_list(texts["labels"], "labels") if "labels" in texts else None
    templates = json_list(texts["templates"][0], "templates") if "templates" in texts else None
    top_k = form_int(texts["top_k"][0], "top_k") if "top_k" in texts else 5
    if not files:
        raise InvalidInput("send at least one file in the 'image' form field", code="missing_image")
    try:
        body = ClassifyRequest(
            images=["x"] * len(files),
            labels=labels,
            label_set=texts.get("label_set", [None])[0],
            templates=templates,
            top_k=top_k,
        )
    except ValidationError as exc:
        raise validation_error(exc) from None
    return body, files


async def parse_classify_request(request: Request, settings: Settings) -> tuple[ClassifyRequest, list[bytes]]:
    """JSON (base64 images) or multipart (files) -> the same validated request + raw image bytes."""
    kind = media_type(request)
    if kind == JSON:
        body = await read_json(request, ClassifyRequest)
        files = [decode_base64_image(s, i) for i, s in enumerate(body.images)]
    elif kind == MULTIPART:
        body, files = await _read_multipart(request, settings)
    else:
        raise UnsupportedMedia("send application/json (base64 images) or multipart/form-data (image files)")
    if len(files) > settings.max_images_per_request:
        raise InvalidInput(
            f"{len(files)} images; the limit is {settings.max_images_per_request} per request",
            code="too_many_images",
        )
    if (body.labels is None) == (body.label_set is None):
        raise InvalidInput(
            "give exactly one of 'labels' (a list) or 'label_set' (an id)", code="invalid_request"
        )
    return body, files


# -- resolve ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What the images are classified among: a label set's view, or validated ad-hoc labels."""

    labels: list[str]
    view: LabelSetView | None = None
    templates: list[str] | None = None

    @property
    def metric_label(self) -> str:
        return self.view.id if self.view is not None else ADHOC


def resolve(
    body: ClassifyRequest,
    engine: ClassificationEngine,
    settings: Settings,
    label_sets: LabelSetService | None,
) -> Target:
    if body.label_set is not None:
        assert label_sets is not None
        view = label_sets.repository.get_view(body.label_set)
        if view.model != engine.model_id:
            raise Conflict(
                f"label set {view.id!r} was built for model {view.model!r}; "
                f"this server runs {engine.model_id!r}",
                code="model_mismatch",
            )
        if len(view.labels) < 2:
            raise InvalidInput(f"label set {view.id!r} has fewer than 2 classes", code="label_set_too_small")
        if body.templates is not None:
            raise InvalidInput("templates are fixed by the label set; omit them", code="invalid_request")
        return Target(list(view.labels), view=view)
    labels = validate_labels(
        body.labels or [], max_count=settings.max_labels, max_length=settings.max_label_length
    )
    return Target(labels, templates=validate_templates(body.templates, engine.preset.templates))


# -- encode ----------------------------------------------------------------------------------------
async def encode(
    request: Request, engine: ClassificationEngine, settings: Settings, target: Target, files: list[bytes]
) -> tuple[EncodedImages, np.ndarray]:
    """Image embeddings and the class text embeddings (stored in a label set, or encoded now)."""
    if target.view is not None:  # the label set's aspect policy and image space: queries as its prototypes
        view = target.view
        work = engine.encode_uploads(files, policy=view.policy, spaces=(view.space,))
        encoded = await unless_disconnected(request, work)
        return encoded, target.view.text_embeddings
    assert target.templates is not None
    text_work = engine.text_embeddings(target.labels, target.templates, timeout_s=settings.request_timeout_s)
    encoded, text = await unless_disconnected(
        request, asyncio.gather(engine.encode_uploads(files), text_work)
    )
    return encoded, text


# -- score -----------------------------------------------------------------------------------------
def score(
    engine: ClassificationEngine, target: Target, encoded: EncodedImages, text: np.ndarray
) -> ScoredBatch:
    if target.view is not None:
        return target.view.score(
            encoded.embeddings,
            encoded.features_in(target.view.space),
            logit_scale=engine.logit_scale,
            logit_bias=engine.logit_bias,
        )
    return score_batch(
        encoded.embeddings,
        encoded.aux_features,
        text,
        logit_scale=engine.logit_scale,
        logit_bias=engine.logit_bias,
    )


# -- respond ---------------------------------------------------------------------------------------
def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _label(labels: list[str], index: int, probs: np.ndarray) -> LabelProbability:
    return LabelProbability(label=labels[index], index=int(index), probability=float(probs[index]))


def _trust_note(view: LabelSetView | None, n_proto: int, has_proto: bool) -> str | None:
    if view is None:
        return "ad-hoc labels have no image prototypes: TrustVLM needs a label set with support images"
    if n_proto == 0:
        return "this label set has no support images yet: TrustVLM is not computed"
    if not has_proto:
        return "the predicted class has no support images: S_ii and TrustVLM are null for this image"
    return None


def build_results(
    scored: ScoredBatch,
    labels: list[str],
    top_k: int,
    *,
    view: LabelSetView | None,
    image_space: str,
    preprocess: str = "crop",
) -> list[ImageResult]:
    """Per-image answer; the decision is the label set's (its calibrated rule, when one applies), and so
    is the conformal prediction set."""
    sets = prediction_sets_for(view, scored) if view is not None else None
    trust_score = view.trust_score if view is not None else "msp"
    n_proto = int(np.count_nonzero(view.has_prototype)) if view is not None else 0
    results = []
    k = min(top_k, len(labels))
    for i in range(scored.logits.shape[0]):
        probs = scored.probabilities[i]
        order = np.argsort(-probs, kind="stable")[:k]
        scores = {name: _finite(values[i]) for name, values in scored.scores.items()}
        has_proto = bool(scored.prototype_available[i]) if scored.prototype_available is not None else False
        confidence = scores.get(trust_score)
        refined = None
        if scored.refined_predictions is not None and has_proto:
            refined = _label(labels, int(scored.refined_predictions[i]), probs)
        decision = (
            view.decide(confidence)
            if view is not None
            else uncalibrated_decision(
                trust_score,
                "ad-hoc labels have no calibrated reject rule: use a calibrated label set",
                judges_refined_prediction(trust_score),
            )
        )
        results.append(
            ImageResult(
                index=i,
                prediction=_label(labels, int(scored.predictions[i]), probs),
                top_k=[_label(labels, int(j), probs) for j in order],
                refined_prediction=refined,
                scores=scores,
                confidence=confidence,
                decision=decision,
                prediction_set=None
                if sets is None
                else PredictionSet(
                    labels=[labels[j] for j in sets[i].indices],
                    indices=sets[i].indices,
                    epsilon=sets[i].conformal.epsilon,
                    method=sets[i].conformal.method,
                    probabilities=sets[i].conformal.probabilities,
                    guarantee=sets[i].conformal.guarantee,
                ),
                trust=TrustInfo(
                    image_space=image_space,
                    prototypes_for_prediction=has_proto,
                    classes_with_prototypes=n_proto,
                    preprocess=view.policy if view is not None else preprocess,
                    alpha=view.alpha if view is not None else None,
                    selection_evidence=view.selection_evidence if view is not None else None,
                    note=_trust_note(view, n_proto, has_proto),
                ),
            )
        )
    return results


# -- route -----------------------------------------------------------------------------------------
@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    openapi_extra=OPENAPI_BODY,
    dependencies=[Depends(require_read)],
    summary="Classify images among labels, with a trust score and a reject decision",
    responses={
        400: {"description": "bad input"},
        413: {"description": "too large"},
        415: {"description": "unsupported media"},
        422: {"description": "invalid input"},
        429: {"description": "overloaded"},
    },
)
async def classify(request: Request, engine: EngineDep, settings: SettingsDep) -> ClassifyResponse:
    started = time.perf_counter()
    engine.check_capacity()  # refuse at once when saturated, before reading the upload
    body, files = await parse_classify_request(request, settings)
    with engine.admission():  # counted once the body is in: a slow upload holds no slot
        return await _classify(request, engine, settings, body, files, started)


async def _classify(
    request: Request,
    engine: ClassificationEngine,
    settings: Settings,
    body: ClassifyRequest,
    files: list[bytes],
    started: float,
) -> ClassifyResponse:
    t_parsed = time.perf_counter()
    label_sets = get_label_sets(request) if body.label_set is not None else None
    target = resolve(body, engine, settings, label_sets)
    encoded, text = await encode(request, engine, settings, target, files)
    t_score = time.perf_counter()
    with engine.metrics.timed("scoring", engine.model_id):
        scored = score(engine, target, encoded, text)
    results = build_results(
        scored,
        target.labels,
        body.top_k,
        view=target.view,
        image_space=(target.view.space_encoder if target.view is not None else "") or engine.aux_encoder_id,
        preprocess=engine.preset.preprocess,
    )
    done = time.perf_counter()
    engine.metrics.observe_answers(
        engine.model_id,
        target.metric_label,
        ((r.decision.score, r.confidence, r.decision.accept) for r in results),
    )
    if target.view is not None:
        record_live_answers(
            request.app.state.trust_monitor,
            target.view,
            [r.confidence for r in results],
            [r.decision.accept for r in results],
        )
    if label_sets is not None and target.view is not None:
        features = encoded.features_in(target.view.space)
        label_sets.adaptation.observe_predictions(target.view.id, features, scored)
    view = target.view
    return ClassifyResponse(
        model=engine.model_id,
        label_set=LabelSetRef(id=view.id, version=view.version) if view is not None else None,
        results=results,
        timing_ms={
            "parse": round((t_parsed - started) * 1000, 3),
            "decode": round(encoded.decode_s * 1000, 3),
            "inference": round((t_score - t_parsed - encoded.decode_s) * 1000, 3),
            "scoring": round((done - t_score) * 1000, 3),
            "total": round((done - started) * 1000, 3),
        },
    )
