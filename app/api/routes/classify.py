"""POST /v1/classify: zero-shot prediction + TrustVLM confidence + calibrated decision, per image."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.deps import EngineDep, SettingsDep, get_label_sets, require_read
from app.api.disconnect import unless_disconnected
from app.api.errors import APIError, overloaded
from app.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    Decision,
    ImageResult,
    LabelProbability,
    LabelSetRef,
    TrustInfo,
)
from app.api.validation import decode_base64_image, validate_labels, validate_templates
from app.config import Settings
from app.engine.batcher import QueueFullError
from app.engine.engine import ClassificationEngine
from app.engine.scoring import ScoredBatch, score_batch

router = APIRouter(tags=["classify"])

# Above this many classes TrustVLM*'s visual softmax uses the FAISS top-k prototypes (T_v = 0.01 leaves
# negligible mass outside them; see app.trust.scores.visual_probs_from_topk).
EXACT_VISUAL_SOFTMAX_MAX_CLASSES = 1024
PROTOTYPE_TOPK = 64

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


# -- parsing ---------------------------------------------------------------------------------------
def _parse_json_list(raw: str, field: str) -> list[str]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise APIError(422, f"invalid_{field}", f"{field} must be a JSON list of strings") from None
    if not isinstance(value, list):
        raise APIError(422, f"invalid_{field}", f"{field} must be a JSON list of strings")
    return value


async def _read_multipart(request: Request, settings: Settings) -> tuple[ClassifyRequest, list[bytes]]:
    try:
        form = await request.form(
            max_files=settings.max_images_per_request + 1,
            max_fields=64,
            max_part_size=settings.max_body_bytes,
        )
    except APIError:
        raise
    except Exception as exc:  # malformed multipart, too many parts, bad boundary
        raise APIError(400, "invalid_multipart", f"could not parse the multipart body: {exc}") from None
    files: list[bytes] = []
    for key in ("image", "images"):
        for item in form.getlist(key):
            if not isinstance(item, UploadFile):
                raise APIError(422, "invalid_image", f"form field {key!r} must be a file upload")
            files.append(await item.read())
    texts: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            texts.setdefault(key, []).append(value)
    unknown = set(texts) - {"labels", "label_set", "templates", "top_k"}
    if unknown:
        raise APIError(422, "unknown_field", f"unknown form field(s): {sorted(unknown)}")
    labels: list[str] | None = None
    if "labels" in texts:
        values = texts["labels"]
        labels = (
            _parse_json_list(values[0], "labels")
            if len(values) == 1 and values[0].lstrip().startswith("[")
            else values
        )
    templates = _parse_json_list(texts["templates"][0], "templates") if "templates" in texts else None
    top_k = 5
    if "top_k" in texts:
        try:
            top_k = int(texts["top_k"][0])
        except ValueError:
            raise APIError(422, "invalid_top_k", "top_k must be an integer") from None
    if not files:
        raise APIError(422, "missing_image", "send at least one file in the 'image' form field")
    try:
        body = ClassifyRequest(
            images=["x"] * len(files),
            labels=labels,
            label_set=texts.get("label_set", [None])[0],
            templates=templates,
            top_k=top_k,
        )
    except ValidationError as exc:
        raise _validation_error(exc) from None
    return body, files


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return APIError(422, "invalid_request", f"invalid request: {where}: {first.get('msg')}")


async def _read_json(request: Request) -> tuple[ClassifyRequest, list[bytes]]:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "malformed_json", "the request body is not valid JSON") from None
    except RecursionError:
        raise APIError(400, "malformed_json", "the JSON body is nested too deeply") from None
    if isinstance(data, dict):
        unknown = data.keys() - ClassifyRequest.model_fields.keys()
        if unknown:
            shown = sorted(str(k)[:40] for k in unknown)[:5]
            raise APIError(422, "unknown_field", f"unknown field(s) ({len(unknown)}): {shown}")
    try:
        body = ClassifyRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    return body, [decode_base64_image(s, i) for i, s in enumerate(body.images)]


async def parse_classify_request(request: Request, settings: Settings) -> tuple[ClassifyRequest, list[bytes]]:
    """JSON (base64 images) or multipart (files) -> the same validated request + raw image bytes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body, files = await _read_json(request)
    elif content_type == "multipart/form-data":
        body, files = await _read_multipart(request, settings)
    else:
        raise APIError(
            415,
            "unsupported_media_type",
            "send application/json (base64 images) or multipart/form-data (image files)",
        )
    if len(files) > settings.max_images_per_request:
        raise APIError(
            422,
            "too_many_images",
            f"{len(files)} images; the limit is {settings.max_images_per_request} per request",
        )
    if (body.labels is None) == (body.label_set is None):
        raise APIError(422, "invalid_request", "give exactly one of 'labels' (a list) or 'label_set' (an id)")
    return body, files


# -- response --------------------------------------------------------------------------------------
def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _label(labels: list[str], index: int, probs: np.ndarray) -> LabelProbability:
    return LabelProbability(label=labels[index], index=int(index), probability=float(probs[index]))


def build_results(
    scored: ScoredBatch,
    labels: list[str],
    top_k: int,
    *,
    view: Any | None,
    image_space: str,
) -> list[ImageResult]:
    """Per-image answer; the decision uses the label set's calibration when it has one."""
    trust_score = view.trust_score if view is not None else "msp"
    n_proto = int(np.count_nonzero(view.has_prototype)) if view is not None else 0
    results = []
    k = min(top_k, len(labels))
    for i in range(scored.logits.shape[0]):
        probs = scored.probabilities[i]
        order = np.argsort(-probs, kind="stable")[:k]
        scores = {name: _finite(values[i]) for name, values in scored.scores.items()}
        has_proto = bool(scored.prototype_available[i]) if scored.prototype_available is not None else False
        note = None
        if view is None:
            note = "ad-hoc labels have no image prototypes: TrustVLM needs a label set with support images"
        elif n_proto == 0:
            note = "this label set has no support images yet: TrustVLM is not computed"
        elif not has_proto:
            note = "the predicted class has no support images: S_ii and TrustVLM are null for this image"
        confidence = scores.get(trust_score)
        refined = None
        if scored.refined_predictions is not None and has_proto:
            refined = _label(labels, int(scored.refined_predictions[i]), probs)
        applies_to = "refined_prediction" if trust_score == "trustvlm_star" else "prediction"
        if view is not None:
            d = view.decide(confidence)
            decision = Decision(
                accept=d.accept,
                threshold=d.threshold,
                score=d.score or trust_score,
                rule=d.rule,
                guarantee=d.guarantee,
                calibrated=d.calibrated,
                applies_to=applies_to,
                note=d.note,
            )
        else:
            decision = Decision(
                accept=None,
                score=trust_score,
                calibrated=False,
                applies_to=applies_to,
                note="ad-hoc labels have no calibrated reject rule: use a calibrated label set",
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
                trust=TrustInfo(
                    image_space=image_space,
                    prototypes_for_prediction=has_proto,
                    classes_with_prototypes=n_proto,
                    note=note,
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
    try:
        engine.check_capacity()  # refuse at once when saturated, before reading the upload
        body, files = await parse_classify_request(request, settings)
        with engine.admission():  # counted once the body is in: a slow upload holds no slot
            return await _classify(request, engine, settings, body, files, started)
    except QueueFullError as exc:
        engine.metrics.overload_rejections.labels(engine.model_id).inc()
        raise overloaded(str(exc), exc.retry_after_s) from None


async def _classify(
    request: Request,
    engine: ClassificationEngine,
    settings: Settings,
    body: ClassifyRequest,
    files: list[bytes],
    started: float,
) -> ClassifyResponse:
    t_parsed = time.perf_counter()
    view = None
    label_sets = None
    if body.label_set is not None:
        label_sets = get_label_sets(request)
        view = label_sets.get_view(body.label_set)
        if view.model != engine.model_id:
            raise APIError(
                409,
                "model_mismatch",
                f"label set {view.id!r} was built for model {view.model!r}; "
                f"this server runs {engine.model_id!r}",
            )
        labels = list(view.labels)
        if len(labels) < 2:
            raise APIError(422, "label_set_too_small", f"label set {view.id!r} has fewer than 2 classes")
        if body.templates is not None:
            raise APIError(422, "invalid_request", "templates are fixed by the label set; omit them")
        text = view.text_embeddings
    else:
        labels = validate_labels(
            body.labels or [], max_count=settings.max_labels, max_length=settings.max_label_length
        )
        templates = validate_templates(body.templates, engine.preset.templates)
    try:
        if view is None:
            text_work = engine.text_embeddings(labels, templates, timeout_s=settings.request_timeout_s)
            encoded, text = await unless_disconnected(
                request, asyncio.gather(engine.encode_uploads(files), text_work)
            )
        else:
            encoded = await unless_disconnected(request, engine.encode_uploads(files))
    except TimeoutError:
        raise APIError(
            503,
            "timeout",
            f"inference did not finish within {settings.request_timeout_s} s",
            headers={"Retry-After": "5"},
        ) from None
    t_score = time.perf_counter()
    trust = engine.preset.trust
    scored = score_batch(
        encoded.embeddings,
        encoded.aux_features,
        text,
        logit_scale=engine.logit_scale,
        logit_bias=engine.logit_bias,
        prototypes=view.prototypes if view is not None else None,
        prototype_topk=view.prototype_topk(encoded.aux_features, PROTOTYPE_TOPK)
        if view is not None and len(labels) > EXACT_VISUAL_SOFTMAX_MAX_CLASSES
        else None,
        has_prototype=view.has_prototype if view is not None else None,
        alpha=view.alpha if view is not None else trust.alpha,
        visual_temperature=view.visual_temperature if view is not None else trust.visual_temperature,
    )
    results = build_results(scored, labels, body.top_k, view=view, image_space=engine.aux_encoder_id)
    done = time.perf_counter()
    engine.metrics.stage_duration.labels("scoring", engine.model_id).observe(done - t_score)
    set_label = view.id if view is not None else "_adhoc"
    engine.metrics.images_classified.labels(engine.model_id, set_label).inc(len(results))
    for r in results:
        if r.confidence is not None:
            engine.metrics.trust_score.labels(engine.model_id, set_label, r.decision.score).observe(
                r.confidence
            )
        if r.decision.calibrated:
            engine.metrics.decisions.labels(
                engine.model_id, set_label, "accept" if r.decision.accept else "reject"
            ).inc()
    if label_sets is not None and view is not None and hasattr(label_sets, "observe_predictions"):
        label_sets.observe_predictions(view.id, encoded.aux_features, scored)
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
