"""POST /v1/label-sets/{id}/images/archive: support images from a zip, tar or tar.gz of class folders (each
image's class is the folder that holds it; ``app.classfolders``). Bounded before any decoding: the body by
the request limits, the archive's entries by ``max_archive_members``, its expanded bytes by
``max_body_bytes`` (what a multipart upload of the same images could carry), the pixels by the engine's
per-request budget. All-or-nothing like the multipart route; answers what was skipped."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from app.api.deps import LabelSetsDep, SettingsDep, require_admin
from app.api.parsing import MULTIPART, media_type, read_form
from app.api.routes.label_sets import add_support, expected_version
from app.api.schemas_console import SupportArchiveOut
from app.classfolders import ArchiveLimits, ClassFolderImages, read_class_archive
from app.config import Settings
from app.errors import InvalidInput

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


async def archive_bytes(request: Request, settings: Settings) -> bytes:
    """The uploaded archive: the raw body, or the multipart field ``archive``."""
    if media_type(request) == MULTIPART:
        form = await read_form(request, settings, max_files=1, max_fields=32)
        upload = form.get("archive")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("send the archive file in the 'archive' form field", code="missing_archive")
        return await upload.read()
    data = await request.body()
    if not data:
        raise InvalidInput("send a zip, tar or tar.gz archive of class folders", code="missing_archive")
    return data


@router.post("/{label_set_id}/images/archive", dependencies=[Depends(require_admin)],
             response_model=SupportArchiveOut, openapi_extra=_ARCHIVE_BODY,
             summary="Add support images from a zip / tar / tar.gz of class folders")  # fmt: skip
async def add_support_archive(
    label_set_id: str,
    request: Request,
    service: LabelSetsDep,
    settings: SettingsDep,
    version: int | None = Depends(expected_version),
) -> SupportArchiveOut:
    async def class_folder_images() -> ClassFolderImages:
        data = await archive_bytes(request, settings)
        limits = ArchiveLimits(max_members=settings.max_archive_members, max_bytes=settings.max_body_bytes)
        images = await asyncio.to_thread(read_class_archive, data, limits)
        if not images.files:
            raise InvalidInput(
                f"the archive holds no images in class folders ({images.skipped} entries skipped)",
                code="no_images",
                details={"skipped_names": images.skipped_names},
            )
        return images

    answer, images = await add_support(request, service, label_set_id, version, class_folder_images)
    return SupportArchiveOut(
        **answer.model_dump(), skipped=images.skipped, skipped_names=images.skipped_names
    )
