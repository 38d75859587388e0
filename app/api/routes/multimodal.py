"""Multimodal (ACR) routes: list the loaded checkpoints, predict from per-modality inputs.

POST /v1/multimodal/{model}/predict accepts either
- JSON ``{"inputs": {"<modality>": [numbers...]}, "top_k": 5}``, or
- multipart/form-data with one field per modality — a file upload (image, WAV) or a JSON list of numbers —
  plus an optional ``top_k`` field.
Both are read by ``app.api.parsing`` with the limits and error codes of every other route.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from app.api.deps import MultimodalDep, SettingsDep, require_read
from app.api.disconnect import unless_disconnected
from app.api.parsing import JSON, MULTIPART, URLENCODED, form_int, media_type, read_form, read_json
from app.api.schemas_multimodal import (
    MultimodalModelsResponse,
    MultimodalPrediction,
    MultimodalPredictRequest,
)
from app.config import Settings
from app.errors import InvalidInput, UnsupportedMedia, shown
from app.multimodal.service import ModalityPayload

router = APIRouter(prefix="/v1/multimodal", tags=["multimodal"])
FORM_TYPES = (MULTIPART, URLENCODED)  # the latter: vectors only
MAX_FORM_PARTS = 32  # modalities + top_k (a model has a handful of modalities)
MAX_TOP_K = 1000

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


@router.get("/models", response_model=MultimodalModelsResponse, dependencies=[Depends(require_read)])
async def list_models(service: MultimodalDep) -> dict[str, Any]:
    """Every loaded multimodal checkpoint: modalities and what each accepts, classes, calibration."""
    return {"models": service.list_models()}


def _vector(key: str, value: str) -> list[float]:
    """A form field holding one modality's feature vector as a JSON list of numbers."""
    try:
        vector = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        vector = None
    if not isinstance(vector, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in vector
    ):
        raise InvalidInput(
            f"form field {shown(key)} must be a file upload or a JSON list of numbers",
            code="invalid_modality_input",
        )
    return vector


async def _form_inputs(request: Request, settings: Settings) -> tuple[dict[str, ModalityPayload], int]:
    form = await read_form(
        request,
        settings,
        max_files=MAX_FORM_PARTS,
        max_fields=MAX_FORM_PARTS,
        media_types=FORM_TYPES,
        expected="application/json or multipart/form-data",
    )
    inputs: dict[str, ModalityPayload] = {}
    top_k = 5
    for key, value in form.multi_items():
        if key == "top_k" and isinstance(value, str):
            top_k = form_int(value, "top_k")
            if not 1 <= top_k <= MAX_TOP_K:
                raise InvalidInput(f"top_k must be in [1, {MAX_TOP_K}], got {top_k}", code="invalid_top_k")
            continue
        if key in inputs:
            raise InvalidInput(f"modality {shown(key)} was given more than once", code="duplicate_modality")
        inputs[key] = await value.read() if isinstance(value, UploadFile) else _vector(key, value)
    return inputs, top_k


@router.post(
    "/{model}/predict",
    response_model=MultimodalPrediction,
    openapi_extra=_REQUEST_BODY,
    dependencies=[Depends(require_read)],
)
async def predict(
    model: str, request: Request, service: MultimodalDep, settings: SettingsDep
) -> dict[str, Any]:
    """Classify one multimodal sample and say whether to trust it (checkpoint's calibrated threshold)."""
    kind = media_type(request)
    if kind == JSON:
        body = await read_json(request, MultimodalPredictRequest)
        inputs: dict[str, ModalityPayload] = dict(body.inputs)
        top_k = body.top_k
    elif kind in FORM_TYPES:
        inputs, top_k = await _form_inputs(request, settings)
    else:
        raise UnsupportedMedia(
            f"send application/json or multipart/form-data, not {shown(kind or 'no content type')}"
        )
    return await unless_disconnected(request, service.predict_batched(model, inputs, top_k))
