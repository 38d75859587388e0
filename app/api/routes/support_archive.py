"""POST /v1/label-sets/{id}/images/archive: support images from a zip, tar or tar.gz of class folders (each
image's class is the folder that holds it; ``app.classfolders``). Bounded before any decoding: the body by
the request limits, the archive's entries by ``max_archive_members``, its expanded bytes by
``max_body_bytes`` (what a multipart upload of the same images could carry), the pixels by the engine's
per-request budget. All-or-nothing like the multipart route; answers what was skipped."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from app.api.deps import LabelSetsDep, get_engine, require_admin
from app.api.errors import APIError, unprocessable
from app.api.routes.label_sets import _read_form, expected_version
from app.api.schemas_console import SupportArchiveOut
from app.classfolders import ArchiveLimits, ClassFolderError, read_class_archive

router = APIRouter(prefix="/v1/label-sets", tags=["label-sets"])

_ARCHIVE_BODY = {
    "requestBody": {
        "required": True,
        "description": "the archive as the body (application/zip, application/x-tar, application/gzip), or "
        "a multipart form with the file in field 'archive'",
        "content": {
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"archive": {"type": "string", "format": "binary"}},
                    "required": ["archive"],
                }
            },
        },
    }
}


async def archive_bytes(request: Request) -> bytes:
    """The uploaded archive: the raw body, or the multipart field ``archive``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await _read_form(request, 1)
        upload = form.get("archive")
        if not isinstance(upload, UploadFile):
            raise unprocessable("send the archive file in the 'archive' form field", code="missing_archive")
        return await upload.read()
    data = await request.body()
    if not data:
        raise unprocessable("send a zip, tar or tar.gz archive of class folders", code="missing_archive")
    return data


@router.post("/{label_set_id}/images/archive", dependencies=[Depends(require_admin)],
             response_model=SupportArchiveOut, openapi_extra=_ARCHIVE_BODY,
             summary="Add support images from a zip / tar / tar.gz of class folders")  # fmt: skip
async def add_support_archive(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    version: int | None = Depends(expected_version),
) -> SupportArchiveOut:
    service.get_view(label_set_id)  # 404 before reading a large body
    data = await archive_bytes(request)
    get_engine(request)
    settings = request.app.state.settings
    limits = ArchiveLimits(max_members=settings.max_archive_members, max_bytes=settings.max_body_bytes)
    try:
        images = await asyncio.to_thread(read_class_archive, data, limits)
    except ClassFolderError as exc:
        raise APIError(exc.status, exc.code, str(exc)) from None
    del data
    if not images.files:
        raise unprocessable(
            f"the archive holds no images in class folders ({images.skipped} entries skipped)",
            code="no_images",
            details={"skipped_names": images.skipped_names},
        )
    had_calibration = service.get_view(label_set_id).calibration is not None
    view, added = await service.add_support_images(
        label_set_id, images.labels, images.files, expected_version=version
    )
    return SupportArchiveOut(
        id=view.id,
        version=view.version,
        added=added,
        support_counts={label: int(n) for label, n in zip(view.labels, view.support_counts)},
        calibration_dropped=had_calibration,
        skipped=images.skipped,
        skipped_names=images.skipped_names,
    )
