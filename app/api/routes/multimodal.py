"""Multimodal (ACR) routes: list the loaded checkpoints, predict from per-modality inputs.

POST /v1/multimodal/{model}/predict accepts either
- JSON ``{"inputs": {"<modality>": [numbers...]}, "top_k": 5}``, or
- multipart/form-data with one field per modality — a file upload (image, WAV) or a JSON list of numbers —
  plus an optional ``top_k`` field.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.deps import require_read
from app.api.disconnect import unless_disconnected
from app.api.errors import APIError, overloaded, unprocessable
from app.api.schemas_multimodal import (
    MultimodalModelsResponse,
    MultimodalPrediction,
    MultimodalPredictRequest,
)
from app.api.validation import shown
from app.engine.batcher import QueueFullError
from app.multimodal.service import ModalityPayload, MultimodalService

router = APIRouter(prefix="/v1/multimodal", tags=["multimodal"])
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # the latter: vectors only
MAX_FORM_PARTS = 32  # modalities + top_k (a model has a handful of modalities)

_MULTIPART_SCHEMA = {
    "type": "object",
    "description": "one field per modality: a file (image, WAV) or a JSON list of numbers; optional top_k",
    "properties": {"top_k": {"type": "integer", "minimum": 1, "default": 5}},
    "additionalProperties": {"oneOf": [{"type": "string", "format": "binary"}, {"type": "string"}]},
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": MultimodalPredictRequest.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


def get_service(request: Request) -> MultimodalService:
    """The app's ``MultimodalService`` (503 when the server was started without one)."""
    service = getattr(request.app.state, "multimodal", None)
    if service is None:
        raise APIError(503, "multimodal_unavailable", "multimodal models are not loaded on this server")
    return service


@router.get("/models", response_model=MultimodalModelsResponse, dependencies=[Depends(require_read)])
async def list_models(request: Request) -> dict[str, Any]:
    """Every loaded multimodal checkpoint: modalities and what each accepts, classes, calibration."""
    return {"models": get_service(request).list_models()}


def _parse_top_k(value: Any) -> int:
    try:
        top_k = int(value)
    except (TypeError, ValueError) as exc:
        raise unprocessable(
            f"top_k must be an integer, got {shown(str(value))}", code="invalid_top_k"
        ) from exc
    if not 1 <= top_k <= 1000:
        raise unprocessable(f"top_k must be in [1, 1000], got {top_k}", code="invalid_top_k")
    return top_k


async def _json_inputs(request: Request) -> tuple[dict[str, ModalityPayload], int]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise unprocessable(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    try:
        parsed = MultimodalPredictRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise unprocessable(f"invalid request: {where}: {first['msg']}", code="invalid_request") from exc
    return dict(parsed.inputs), parsed.top_k


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def _multipart_inputs(request: Request) -> tuple[dict[str, ModalityPayload], int]:
    form = await request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS)
    inputs: dict[str, ModalityPayload] = {}
    top_k = 5
    for key, value in form.multi_items():
        if key == "top_k":
            top_k = _parse_top_k(value)
            continue
        if key in inputs:
            raise unprocessable(f"modality {shown(key)} was given more than once", code="duplicate_modality")
        if isinstance(value, UploadFile):
            inputs[key] = await value.read()
            continue
        try:
            vector = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise unprocessable(
                f"form field {shown(key)} must be a file upload or a JSON list of numbers",
                code="invalid_modality_input",
            ) from exc
        if not isinstance(vector, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in vector
        ):
            raise unprocessable(
                f"form field {shown(key)} must be a JSON list of numbers", code="invalid_modality_input"
            )
        inputs[key] = vector
    return inputs, top_k


@router.post(
    "/{model}/predict",
    response_model=MultimodalPrediction,
    openapi_extra=_REQUEST_BODY,
    dependencies=[Depends(require_read)],
)
async def predict(model: str, request: Request) -> dict[str, Any]:
    """Classify one multimodal sample and say whether to trust it (checkpoint's calibrated threshold)."""
    service = get_service(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        inputs, top_k = await _json_inputs(request)
    elif content_type in FORM_TYPES:
        inputs, top_k = await _multipart_inputs(request)
    else:
        raise APIError(
            415,
            "unsupported_media_type",
            f"send application/json or multipart/form-data, not {shown(content_type or 'no content type')}",
        )
    try:
        return await unless_disconnected(request, service.predict_batched(model, inputs, top_k))
    except QueueFullError as exc:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.overload_rejections.labels(f"multimodal:{model}").inc()
        raise overloaded(str(exc), exc.retry_after_s) from None
    except TimeoutError:
        raise APIError(
            503, "timeout", "inference did not finish in time", headers={"Retry-After": "5"}
        ) from None
