"""Export and import of whole label sets (the archive format is ``app.labelsets.archive``): an imported
label set passes the same validation as create + add images + calibrate, and exact array checks against
the running model; stored FAISS indexes are rebuilt, never parsed."""

from __future__ import annotations

import math

from app.engine.prompts import validate_templates
from app.errors import Conflict, InvalidInput, shown
from app.labelsets.archive import as_first_version
from app.labelsets.models import (
    MAX_ALPHA,
    MAX_DESCRIPTION_CHARS,
    MAX_VISUAL_TEMPERATURE,
    LabelSetView,
    is_valid_slug,
    utc_now,
)
from app.labelsets.repository import LabelSetRepository
from app.labelsets.store import StoredLabelSet
from app.labelsets.views import check_arrays


def invalid_archive(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_archive")


class LabelSetTransfer:
    """Moves label sets between servers as records (``archive.write_archive`` / ``read_archive``)."""

    def __init__(self, repository: LabelSetRepository) -> None:
        self.repository = repository

    def export_record(self, label_set_id: str) -> StoredLabelSet:
        """The current stored record (for ``archive.write_archive``)."""
        return self.repository.entry(label_set_id).record

    async def import_record(self, record: StoredLabelSet, new_id: str | None = None) -> LabelSetView:
        """Register an exported label set here (as version 1, under ``new_id`` if given); ``Conflict``
        when the id exists or it was built with another model, ``InvalidInput`` for anything create +
        add-images would have refused (``check_importable``)."""
        repo = self.repository
        label_set_id = new_id or record.meta.id
        if not is_valid_slug(label_set_id):
            raise InvalidInput(f"label-set id {shown(label_set_id)} is not a valid slug", code="invalid_id")
        repo.check_compatible(record.meta)
        self.check_importable(record)
        record = StoredLabelSet(record.meta, record.arrays, {})  # FAISS blobs are rebuilt, never parsed
        fresh = as_first_version(record, label_set_id)
        fresh.meta.updated_at = utc_now()
        async with repo.lock(label_set_id):
            if label_set_id in repo.entries:
                raise Conflict(f"label set {shown(label_set_id)} already exists", code="label_set_exists")
            return await repo.commit(fresh, expected_version=0)

    def check_importable(self, record: StoredLabelSet) -> None:
        """The validation of create + add images + calibrate, applied to an imported record."""
        meta = record.meta
        labels = self.repository.labels(meta.labels)
        if labels != meta.labels:
            raise InvalidInput("labels must not start or end with blanks", code="invalid_labels")
        if not meta.templates:
            raise InvalidInput("an imported label set needs its templates", code="invalid_templates")
        validate_templates(list(meta.templates), [])
        if len(meta.description) > MAX_DESCRIPTION_CHARS:
            raise invalid_archive(f"description holds at most {MAX_DESCRIPTION_CHARS} characters")
        numbers = {
            "alpha": (meta.alpha, 0.0, MAX_ALPHA),
            "visual_temperature": (meta.visual_temperature, 0.0, MAX_VISUAL_TEMPERATURE),
        }
        for name, (value, low, high) in numbers.items():
            if not (math.isfinite(value) and low <= value <= high):
                raise invalid_archive(f"{name} must be in [{low}, {high}], got {value}")
        cal = meta.calibration
        if cal is not None:
            values = (cal.threshold, cal.target, cal.coverage, cal.risk, cal.alpha, cal.visual_temperature)
            if not all(math.isfinite(v) for v in values) or cal.n < 1:
                raise invalid_archive("the calibration record holds non-finite numbers")
        try:
            check_arrays(record, self.repository.engine)
        except ValueError as exc:
            raise invalid_archive(f"invalid label-set arrays: {exc}") from None
