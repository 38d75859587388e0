"""/v1/label-sets: label sets as first-class resources (labels, templates, support images, prototypes,
FAISS index, calibrated reject rule). Writes need the admin scope; every write accepts an optional
``expected_version`` (query) or ``If-Match: <version>`` header and answers 409 when it is stale."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.datastructures import FormData, UploadFile

from app.api.deps import LabelSetsDep, SettingsDep, get_engine, require_admin, require_read
from app.api.errors import APIError
from app.api.parsing import (
    MULTIPART,
    form_bool,
    form_files,
    form_float,
    form_int,
    form_texts,
    media_type,
    read_form,
    string_list,
)
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
from app.classfolders import ClassFolderImages
from app.config import Settings
from app.errors import InvalidInput
from app.labelsets.archive import ARCHIVE_MEDIA_TYPE, ArchiveError, read_archive, write_archive
from app.labelsets.calibration import CalibrationRequest
from app.labelsets.live_trust import stale_windows
from app.labelsets.service import LabelSetService
from app.trust.calibration import CALIBRATION_RULES, DEFAULT_DELTA
from app.trust.conformal import CONFORMAL_METHODS, DEFAULT_EPSILON
from app.trust.scores import TRUST_SCORE_NAMES

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
_CALIBRATE_FIELDS = {
    "rule": {"type": "string", "enum": list(CALIBRATION_RULES)},
    "target_risk": {"type": "number", "description": "e.g. 0.1 for ≤ 10 % selective risk"},
    "delta": {
        "type": "number",
        "description": f"guarantee holds with probability ≥ 1 − delta (default {DEFAULT_DELTA:g})",
    },
    "target_coverage": {"type": "number"},
    "tune": {"type": "boolean", "description": "tune α (and T_v for trustvlm_star) on a held-out half first"},
    "score": {"type": "string", "enum": list(TRUST_SCORE_NAMES)},
    "seed": {"type": "integer"},
    "epsilon": {
        "type": "number",
        "description": f"conformal miscoverage ε (default {DEFAULT_EPSILON:g})",
    },
    "conformal_method": {"type": "string", "enum": list(CONFORMAL_METHODS), "description": "default lac"},
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
    repo = service.repository
    return LabelSetOut.build(repo.get_meta(label_set_id), repo.get_view(label_set_id))


async def _labelled_images(
    request: Request, settings: Settings, max_files: int, fields: set[str]
) -> tuple[list[str], list[bytes], dict[str, str]]:
    """Files from ``images``/``image`` with one label each (still encoded: the engine decodes them a batch
    at a time); the other text fields (``fields``) by name."""
    form: FormData = await read_form(request, settings, max_files=max_files + 1, max_fields=max_files + 32)
    files = await form_files(form, ("images", "image"))
    if not files:
        raise InvalidInput("send at least one file in the 'images' form field", code="missing_image")
    if len(files) > max_files:
        raise InvalidInput(
            f"at most {max_files} images per request, got {len(files)}", code="too_many_images"
        )
    texts = form_texts(form, {"labels", "label"} | fields)
    if "label" in texts:
        if "labels" in texts or len(texts["label"]) != 1:
            raise InvalidInput("give one 'label' for all images, or 'labels' (one per image), not both")
        labels = texts["label"] * len(files)
    else:
        labels = string_list(texts.get("labels", []), "labels")
    if len(labels) != len(files):
        raise InvalidInput(
            f"got {len(files)} images but {len(labels)} labels: give one label per image (or one 'label')",
            code="label_count_mismatch",
        )
    return labels, files, {k: v[-1] for k, v in texts.items() if k in fields}


@router.post(
    "", status_code=201, dependencies=ADMIN, response_model=LabelSetOut, summary="Create a label set"
)
async def create_label_set(body: LabelSetCreate, request: Request, service: LabelSetsDep) -> LabelSetOut:
    get_engine(request)
    await service.repository.create(
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
        preprocess=body.preprocess,
        selection_mode=body.selection_mode,
        image_space=body.image_space,
    )
    return _out(service, body.id)


@router.get("", dependencies=READ, response_model=LabelSetList, summary="List label sets")
async def list_label_sets(service: LabelSetsDep) -> LabelSetList:
    repo = service.repository
    summaries = []
    for view in repo.list_views():
        meta = repo.get_meta(view.id)
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
    unavailable = [UnavailableLabelSet(id=k, reason=v) for k, v in repo.unavailable().items()]
    return LabelSetList(label_sets=summaries, unavailable=unavailable)


@router.post("/import", status_code=201, dependencies=ADMIN, response_model=LabelSetOut,
             summary="Import a label-set archive (gzip body, or multipart field 'archive')")  # fmt: skip
async def import_label_set(
    request: Request,
    service: LabelSetsDep,
    settings: SettingsDep,
    id: str | None = Query(None, pattern=r"^[a-z0-9][a-z0-9\-_]{0,63}$", description="import under this id"),
) -> LabelSetOut:
    get_engine(request)
    if media_type(request) == MULTIPART:
        form = await read_form(request, settings, max_files=1, max_fields=32)
        upload = form.get("archive")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("send the archive file in the 'archive' form field", code="missing_archive")
        data = await upload.read()
    else:
        data = await request.body()
    try:
        record = await asyncio.to_thread(read_archive, data)  # inflate + checksums off the event loop
    except ArchiveError as exc:
        raise InvalidInput(f"invalid label-set archive: {exc}", code="invalid_archive") from None
    view = await service.transfer.import_record(record, id)
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
    await service.repository.update(label_set_id, expected_version=version, **changes)
    return _out(service, label_set_id)


@router.delete("/{label_set_id}", status_code=204, dependencies=ADMIN, summary="Delete a label set")
async def delete_label_set(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    version: int | None = Depends(expected_version),
) -> Response:
    await service.repository.delete(label_set_id, expected_version=version)
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
    await service.repository.add_classes(label_set_id, body.labels, expected_version=version)
    return _out(service, label_set_id)


@router.delete("/{label_set_id}/classes/{label}", dependencies=ADMIN, response_model=LabelSetOut,
               summary="Remove a class (its text embedding, prototype and cache entries)")  # fmt: skip
async def remove_class(
    label_set_id: str, label: str, service: LabelSetsDep, version: int | None = Depends(expected_version)
) -> LabelSetOut:
    await service.repository.remove_class(label_set_id, label, expected_version=version)
    return _out(service, label_set_id)


@router.post("/{label_set_id}/images", dependencies=ADMIN, response_model=SupportImagesOut,
             summary="Add support images (many at once) to class prototypes",
             openapi_extra=_multipart_body(_IMAGES_FORM))  # fmt: skip
async def add_support_images(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    settings: SettingsDep,
    version: int | None = Depends(expected_version),
) -> SupportImagesOut:
    async def labelled_images() -> ClassFolderImages:
        labels, images, _ = await _labelled_images(request, settings, settings.max_images_per_request, set())
        return ClassFolderImages(labels=labels, files=images)

    answer, _ = await add_support(request, service, label_set_id, version, labelled_images)
    return answer


async def add_support(
    request: Request,
    service: LabelSetService,
    label_set_id: str,
    version: int | None,
    read_images: Callable[[], Awaitable[ClassFolderImages]],
) -> tuple[SupportImagesOut, ClassFolderImages]:
    """What every support-image route does around reading its upload: 404 before the body is read,
    ``read_images()`` (image files with one label each), 503 while the model loads, then ``support.add``
    (all-or-nothing). Answers the common reply, which says whether a calibration was dropped, and what
    was read (for a route that reports more, e.g. the archive's skipped entries)."""
    had_calibration = service.repository.get_view(label_set_id).calibration is not None  # 404 first
    images = await read_images()
    get_engine(request)
    view, added = await service.support.add(
        label_set_id, images.labels, images.files, expected_version=version
    )
    answer = SupportImagesOut(
        id=view.id,
        version=view.version,
        added=added,
        support_counts={label: int(n) for label, n in zip(view.labels, view.support_counts)},
        calibration_dropped=had_calibration,
    )
    return answer, images


def calibration_request(fields: dict[str, str]) -> CalibrationRequest:
    """The calibration form's fields → a ``CalibrationRequest`` (422 ``invalid_<field>`` for bad ones)."""
    rule = fields.get("rule") or ("target_coverage" if "target_coverage" in fields else "target_risk")
    if rule not in CALIBRATION_RULES:
        raise InvalidInput(f"rule must be one of {list(CALIBRATION_RULES)}", code="invalid_rule")
    score = fields.get("score")
    if score is not None and score not in TRUST_SCORE_NAMES:
        raise InvalidInput(f"score must be one of {list(TRUST_SCORE_NAMES)}", code="invalid_score")

    def number(name: str) -> float | None:
        return form_float(fields[name], name) if name in fields else None

    epsilon = form_float(fields["epsilon"], "epsilon") if "epsilon" in fields else DEFAULT_EPSILON
    if not 0 < epsilon < 1:
        raise InvalidInput("epsilon must be in (0, 1)", code="invalid_epsilon")
    method = fields.get("conformal_method", "lac")
    if method not in CONFORMAL_METHODS:
        raise InvalidInput(
            f"conformal_method must be one of {list(CONFORMAL_METHODS)}", code="invalid_conformal_method"
        )

    return CalibrationRequest(
        rule=rule,
        target_risk=number("target_risk"),
        delta=form_float(fields["delta"], "delta") if "delta" in fields else DEFAULT_DELTA,
        target_coverage=number("target_coverage"),
        tune=form_bool(fields.get("tune", "false"), "tune"),
        score=score,
        seed=form_int(fields.get("seed", "0"), "seed"),
        epsilon=epsilon,
        conformal_method=method,
    )


@router.post("/{label_set_id}/calibrate", dependencies=ADMIN, response_model=CalibrateOut,
             summary="Pick the acceptance threshold on labelled images (target risk or coverage)",
             openapi_extra=_multipart_body({**_IMAGES_FORM, **_CALIBRATE_FIELDS}))  # fmt: skip
async def calibrate(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    settings: SettingsDep,
    version: int | None = Depends(expected_version),
) -> CalibrateOut:
    service.repository.get_view(label_set_id)  # 404 before reading a large body
    labels, images, fields = await _labelled_images(
        request, settings, settings.max_calibration_images, set(_CALIBRATE_FIELDS)
    )
    get_engine(request)
    view = await service.calibration.calibrate(
        label_set_id, labels, images, calibration_request(fields), expected_version=version
    )
    assert view.calibration is not None
    return CalibrateOut(
        id=view.id,
        version=view.version,
        alpha=view.alpha,
        visual_temperature=view.visual_temperature,
        preprocess=view.policy,
        image_space=view.space,
        calibration=view.calibration,
    )


@router.get("/{label_set_id}/export", dependencies=READ, summary="Export as a .tar.gz archive",
            response_class=Response, responses={200: {"content": {ARCHIVE_MEDIA_TYPE: {}}}})  # fmt: skip
async def export_label_set(label_set_id: str, service: LabelSetsDep) -> Response:
    data = write_archive(service.transfer.export_record(label_set_id))
    return Response(
        data,
        media_type=ARCHIVE_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{label_set_id}.tar.gz"'},
    )


@router.get("/{label_set_id}/monitor", dependencies=READ, response_model=MonitorOut,
            summary="Live trust of a calibrated label set: acceptance, ATC accuracy, drift")  # fmt: skip
async def monitor_label_set(label_set_id: str, request: Request, service: LabelSetsDep) -> MonitorOut:
    view = service.repository.get_view(label_set_id)
    monitor = request.app.state.trust_monitor
    if label_set_id in stale_windows(monitor, {label_set_id: view}):
        monitor.forget(label_set_id)
    return MonitorOut.of(view, monitor.snapshot(label_set_id), monitor.settings)
