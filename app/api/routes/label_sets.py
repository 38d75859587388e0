"""/v1/label-sets: label sets as first-class resources (labels, templates, support images, prototypes,
FAISS index, calibrated reject rule). Writes need the admin scope; every write accepts an optional
``expected_version`` (query) or ``If-Match: <version>`` header and answers 409 when it is stale."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.datastructures import FormData, UploadFile

from app.api.deps import LabelSetsDep, get_engine, require_admin, require_read
from app.api.errors import APIError, unprocessable
from app.api.schemas_label_sets import (
    CalibrateOut,
    ClassesAdd,
    LabelSetCreate,
    LabelSetList,
    LabelSetOut,
    LabelSetSummary,
    LabelSetUpdate,
    MonitorOut,
    SupportImagesOut,
    UnavailableLabelSet,
)
from app.labelsets.archive import ARCHIVE_MEDIA_TYPE, ArchiveError, read_archive, write_archive
from app.labelsets.live_trust import stale_windows
from app.labelsets.service import CalibrationRequest, LabelSetService
from app.trust.conformal import CONFORMAL_METHODS, DEFAULT_EPSILON

router = APIRouter(prefix="/v1/label-sets", tags=["label-sets"])
ADMIN = [Depends(require_admin)]
READ = [Depends(require_read)]

_IMAGES_FORM = {
    "images": {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "image files",
    },
    "labels": {
        "type": "array",
        "items": {"type": "string"},
        "description": "one class per image (repeat the field, or one JSON list); or one 'label' for all",
    },
    "label": {"type": "string", "description": "class of every image in the request"},
}
_CALIBRATE_FORM = {
    **_IMAGES_FORM,
    "rule": {"type": "string", "enum": ["target_risk", "target_coverage"]},
    "target_risk": {"type": "number", "description": "e.g. 0.1 for ≤ 10 % selective risk"},
    "delta": {"type": "number", "description": "guarantee holds with probability ≥ 1 − delta (default 0.05)"},
    "target_coverage": {"type": "number"},
    "tune": {"type": "boolean", "description": "tune α / T_v on a held-out half first"},
    "score": {"type": "string", "enum": ["trustvlm", "trustvlm_star", "msp"]},
    "seed": {"type": "integer"},
    "epsilon": {"type": "number", "description": "conformal set miscoverage ε (default 0.1)"},
    "conformal_method": {"type": "string", "enum": ["lac", "aps"], "description": "default lac"},
}


def _multipart_body(properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": ["images"]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def expected_version(
    expected_version: int | None = Query(None, ge=0, description="answer 409 unless at this version"),
    if_match: str | None = Header(None, description="alternative to expected_version: the version number"),
) -> int | None:
    """The client's optimistic-concurrency precondition, from the query or the If-Match header."""
    if expected_version is not None or if_match is None:
        return expected_version
    try:
        return int(if_match.strip().strip('"').removeprefix("W/").strip('"'))
    except ValueError:
        raise APIError(400, "invalid_if_match", "If-Match must be a label-set version number") from None


def _out(service: LabelSetService, label_set_id: str) -> LabelSetOut:
    return LabelSetOut.build(service.get_meta(label_set_id), service.get_view(label_set_id))


async def _read_form(request: Request, max_files: int) -> FormData:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise APIError(415, "unsupported_media_type", "send multipart/form-data with image files")
    try:
        return await request.form(max_files=max_files + 1, max_fields=max_files + 32)
    except APIError:  # a body limit (size, time) broken while reading
        raise
    except Exception as exc:  # malformed multipart, too many parts
        raise APIError(400, "invalid_multipart", f"could not parse the multipart body: {exc}") from None


async def _labelled_images(
    form: FormData, max_files: int, allowed_fields: set[str]
) -> tuple[list[str], list[bytes], dict[str, str]]:
    """Files from ``images``/``image`` with one label each (still encoded: the engine decodes them a batch
    at a time); other text fields returned by name."""
    files: list[bytes] = []
    for key in ("images", "image"):
        for item in form.getlist(key):
            if not isinstance(item, UploadFile):
                raise unprocessable(f"form field {key!r} must be a file upload", code="invalid_image")
            files.append(await item.read())
    if not files:
        raise unprocessable("send at least one file in the 'images' form field", code="missing_image")
    if len(files) > max_files:
        raise unprocessable(
            f"at most {max_files} images per request, got {len(files)}", code="too_many_images"
        )
    texts: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            texts.setdefault(key, []).append(value)
    unknown = set(texts) - {"labels", "label"} - allowed_fields
    if unknown:
        raise unprocessable(f"unknown form field(s): {sorted(unknown)}", code="unknown_field")
    if "label" in texts:
        if "labels" in texts or len(texts["label"]) != 1:
            raise unprocessable("give one 'label' for all images, or 'labels' (one per image), not both")
        labels = texts["label"] * len(files)
    else:
        labels = texts.get("labels", [])
        if len(labels) == 1 and labels[0].lstrip().startswith("["):
            try:
                labels = json.loads(labels[0])
            except json.JSONDecodeError:
                raise unprocessable("labels must be a JSON list of strings", code="invalid_labels") from None
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise unprocessable("labels must be a JSON list of strings", code="invalid_labels")
    if len(labels) != len(files):
        raise unprocessable(
            f"got {len(files)} images but {len(labels)} labels: give one label per image (or one 'label')",
            code="label_count_mismatch",
        )
    return labels, files, {k: v[-1] for k, v in texts.items() if k in allowed_fields}


@router.post(
    "", status_code=201, dependencies=ADMIN, response_model=LabelSetOut, summary="Create a label set"
)
async def create_label_set(body: LabelSetCreate, request: Request, service: LabelSetsDep) -> LabelSetOut:
    get_engine(request)
    await service.create(
        body.id,
        body.labels,
        templates=body.templates,
        description=body.description,
        model=body.model,
        aux_encoder=body.aux_encoder,
        alpha=body.alpha,
        visual_temperature=body.visual_temperature,
        trust_score=body.trust_score,
        adaptation=body.adaptation,
    )
    return _out(service, body.id)


@router.get("", dependencies=READ, response_model=LabelSetList, summary="List label sets")
async def list_label_sets(service: LabelSetsDep) -> LabelSetList:
    summaries = []
    for view in service.list_views():
        meta = service.get_meta(view.id)
        summaries.append(
            LabelSetSummary(
                id=view.id,
                version=view.version,
                description=meta.description,
                model=view.model,
                classes=len(view.labels),
                classes_with_prototypes=int(view.has_prototype.sum()),
                trust_score=view.trust_score,
                calibrated=view.calibration is not None,
                updated_at=meta.updated_at,
            )
        )
    unavailable = [UnavailableLabelSet(id=k, reason=v) for k, v in service.unavailable().items()]
    return LabelSetList(label_sets=summaries, unavailable=unavailable)


@router.post("/import", status_code=201, dependencies=ADMIN, response_model=LabelSetOut,
             summary="Import a label-set archive (gzip body, or multipart field 'archive')")  # fmt: skip
async def import_label_set(
    request: Request,
    service: LabelSetsDep,
    id: str | None = Query(None, pattern=r"^[a-z0-9][a-z0-9\-_]{0,63}$", description="import under this id"),
) -> LabelSetOut:
    get_engine(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await _read_form(request, 1)
        upload = form.get("archive")
        if not isinstance(upload, UploadFile):
            raise unprocessable("send the archive file in the 'archive' form field", code="missing_archive")
        data = await upload.read()
    else:
        data = await request.body()
    try:
        record = await asyncio.to_thread(read_archive, data)  # inflate + checksums off the event loop
    except ArchiveError as exc:
        raise unprocessable(f"invalid label-set archive: {exc}", code="invalid_archive") from None
    view = await service.import_record(record, id)
    return _out(service, view.id)


@router.get("/{label_set_id}", dependencies=READ, response_model=LabelSetOut, summary="Get a label set")
async def get_label_set(label_set_id: str, service: LabelSetsDep) -> LabelSetOut:
    return _out(service, label_set_id)


@router.patch("/{label_set_id}", dependencies=ADMIN, response_model=LabelSetOut, summary="Change settings")
async def update_label_set(
    label_set_id: str,
    body: LabelSetUpdate,
    service: LabelSetsDep,
    version: int | None = Depends(expected_version),
) -> LabelSetOut:
    changes = {name: getattr(body, name) for name in body.model_fields_set if getattr(body, name) is not None}
    await service.update(label_set_id, expected_version=version, **changes)
    return _out(service, label_set_id)


@router.delete("/{label_set_id}", status_code=204, dependencies=ADMIN, summary="Delete a label set")
async def delete_label_set(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    version: int | None = Depends(expected_version),
) -> Response:
    await service.delete(label_set_id, expected_version=version)
    request.app.state.trust_monitor.forget(label_set_id)
    request.app.state.metrics.forget_label_set(label_set_id)
    return Response(status_code=204)


@router.post("/{label_set_id}/classes", dependencies=ADMIN, response_model=LabelSetOut, summary="Add classes")
async def add_classes(
    label_set_id: str,
    body: ClassesAdd,
    request: Request,
    service: LabelSetsDep,
    version: int | None = Depends(expected_version),
) -> LabelSetOut:
    get_engine(request)
    await service.add_classes(label_set_id, body.labels, expected_version=version)
    return _out(service, label_set_id)


@router.delete("/{label_set_id}/classes/{label}", dependencies=ADMIN, response_model=LabelSetOut,
               summary="Remove a class (its text embedding, prototype and cache entries)")  # fmt: skip
async def remove_class(
    label_set_id: str, label: str, service: LabelSetsDep, version: int | None = Depends(expected_version)
) -> LabelSetOut:
    await service.remove_class(label_set_id, label, expected_version=version)
    return _out(service, label_set_id)


@router.post("/{label_set_id}/images", dependencies=ADMIN, response_model=SupportImagesOut,
             summary="Add support images (many at once) to class prototypes",
             openapi_extra=_multipart_body(_IMAGES_FORM))  # fmt: skip
async def add_support_images(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    version: int | None = Depends(expected_version),
) -> SupportImagesOut:
    service.get_view(label_set_id)  # 404 before reading a large body
    max_files = request.app.state.settings.max_images_per_request
    form = await _read_form(request, max_files)
    get_engine(request)
    labels, images, _ = await _labelled_images(form, max_files, set())
    had_calibration = service.get_view(label_set_id).calibration is not None
    view, added = await service.add_support_images(label_set_id, labels, images, expected_version=version)
    return SupportImagesOut(
        id=view.id,
        version=view.version,
        added=added,
        support_counts={label: int(n) for label, n in zip(view.labels, view.support_counts)},
        calibration_dropped=had_calibration,
    )


def _number(fields: dict[str, str], name: str, default: float | None = None) -> float | None:
    if name not in fields:
        return default
    try:
        return float(fields[name])
    except ValueError:
        raise unprocessable(
            f"{name} must be a number, got {fields[name][:40]!r}", code=f"invalid_{name}"
        ) from None


@router.post("/{label_set_id}/calibrate", dependencies=ADMIN, response_model=CalibrateOut,
             summary="Pick the acceptance threshold on labelled images (target risk or coverage)",
             openapi_extra=_multipart_body(_CALIBRATE_FORM))  # fmt: skip
async def calibrate(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    version: int | None = Depends(expected_version),
) -> CalibrateOut:
    service.get_view(label_set_id)
    max_files = service.max_calibration_images
    form = await _read_form(request, max_files)
    get_engine(request)
    labels, images, fields = await _labelled_images(form, max_files, set(_CALIBRATE_FORM) - set(_IMAGES_FORM))
    rule = fields.get("rule") or ("target_coverage" if "target_coverage" in fields else "target_risk")
    if rule not in ("target_risk", "target_coverage"):
        raise unprocessable("rule must be target_risk or target_coverage", code="invalid_rule")
    score = fields.get("score")
    if score is not None and score not in ("trustvlm", "trustvlm_star", "msp"):
        raise unprocessable("score must be trustvlm, trustvlm_star or msp", code="invalid_score")
    tune = fields.get("tune", "false").strip().lower()
    if tune not in ("true", "false", "1", "0"):
        raise unprocessable("tune must be true or false", code="invalid_tune")
    try:
        seed = int(fields.get("seed", "0"))
    except ValueError:
        raise unprocessable(
            f"seed must be an integer, got {fields['seed'][:40]!r}", code="invalid_seed"
        ) from None
    epsilon = _number(fields, "epsilon", DEFAULT_EPSILON)
    if epsilon is None or not 0 < epsilon < 1:
        raise unprocessable("epsilon must be in (0, 1)", code="invalid_epsilon")
    method = fields.get("conformal_method", "lac")
    if method not in CONFORMAL_METHODS:
        raise unprocessable("conformal_method must be lac or aps", code="invalid_conformal_method")
    request_ = CalibrationRequest(
        rule=rule,  # type: ignore[arg-type]
        target_risk=_number(fields, "target_risk"),
        delta=_number(fields, "delta", 0.05),  # type: ignore[arg-type]
        target_coverage=_number(fields, "target_coverage"),
        tune=tune in ("true", "1"),
        score=score,  # type: ignore[arg-type]
        seed=seed,
        epsilon=epsilon,
        conformal_method=method,  # type: ignore[arg-type]
    )
    view = await service.calibrate(label_set_id, labels, images, request_, expected_version=version)
    assert view.calibration is not None
    return CalibrateOut(
        id=view.id,
        version=view.version,
        alpha=view.alpha,
        visual_temperature=view.visual_temperature,
        calibration=view.calibration,
    )


@router.get("/{label_set_id}/export", dependencies=READ, summary="Export as a .tar.gz archive",
            response_class=Response, responses={200: {"content": {ARCHIVE_MEDIA_TYPE: {}}}})  # fmt: skip
async def export_label_set(label_set_id: str, service: LabelSetsDep) -> Response:
    data = write_archive(service.export_record(label_set_id))
    return Response(
        data,
        media_type=ARCHIVE_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{label_set_id}.tar.gz"'},
    )


@router.get("/{label_set_id}/monitor", dependencies=READ, response_model=MonitorOut,
            summary="Live trust of a calibrated label set: acceptance, ATC accuracy, drift")  # fmt: skip
async def monitor_label_set(label_set_id: str, request: Request, service: LabelSetsDep) -> MonitorOut:
    view = service.get_view(label_set_id)
    monitor = request.app.state.trust_monitor
    if label_set_id in stale_windows(monitor, {label_set_id: view}):
        monitor.forget(label_set_id)
    return MonitorOut.of(view, monitor.snapshot(label_set_id), monitor.settings)
