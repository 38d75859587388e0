"""The label-set repository: every label set in memory as an immutable view, written through to the
store — loading, versions, per-label-set locks, create / change / delete, and the replica hook of
``LabelSetSync`` (``refresh``).

Every change is a whole-label-set versioned write through ``LabelSetStore`` (optimistic concurrency),
made under a per-label-set lock, so concurrent requests never lose an update. The other parts of the
service (support images, calibration, adaptation, import) write through ``next_version`` + ``commit``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.engine.prompts import validate_labels, validate_templates
from app.errors import Conflict, InvalidInput, NotFound, TrustserveError, Unavailable, shown
from app.labelsets import support_features
from app.labelsets.adaptation import drop_cache, has_cache
from app.labelsets.index import IndexParams
from app.labelsets.models import (
    CACHE_CLASS,
    CACHE_FEATURES,
    CACHE_SCORES,
    COUNTS,
    PROTOTYPE_INDEX,
    SUMS,
    TEXT,
    AdaptationConfig,
    LabelSetMeta,
    LabelSetView,
    is_valid_slug,
    utc_now,
)
from app.labelsets.postgres_store import StoreUnavailableError
from app.labelsets.selection import ImageSpaceSetting, PreprocessSetting, SelectionMode
from app.labelsets.self_selection import change_image_space, change_preprocess
from app.labelsets.store import (
    CorruptEntryError,
    LabelSetNotFoundError,
    LabelSetStore,
    StoredLabelSet,
    VersionConflictError,
)
from app.labelsets.views import build_view, check_arrays
from app.trust.scores import TrustScoreName

log = logging.getLogger(__name__)

# Settings that change what the decision score is computed from: changing one drops the calibration.
SCORE_SETTINGS = frozenset({"alpha", "visual_temperature", "trust_score"})


@dataclass
class LoadReport:
    """Outcome of ``load_all``: loaded ids, and the reason each other entry could not be served."""

    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Entry:
    """The committed record of one label set and the view built from it."""

    record: StoredLabelSet
    view: LabelSetView


class ModelMismatch(Conflict):
    """A stored or imported label set was built with another model or image space."""

    code = "label_set_model_mismatch"


def store_unavailable(exc: Exception) -> Unavailable:
    """For a write the store could not take (database unreachable); nothing was half-written."""
    return Unavailable(
        f"the label-set store is unavailable, nothing was changed; retry later ({exc})",
        code="label_store_unavailable",
    )


def not_found(label_set_id: str) -> NotFound:
    return NotFound(f"label set {shown(label_set_id)} does not exist", code="label_set_not_found")


class LabelSetRepository:
    """Owns every label set in memory (as immutable views) and writes through to the store."""

    def __init__(self, store: LabelSetStore, engine: ClassificationEngine, settings: Settings) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.index_params = IndexParams(hnsw_threshold=settings.index_hnsw_threshold)
        self.entries: dict[str, Entry] = {}
        self.failed: dict[str, str] = {}
        # a lock lives while someone holds or awaits it: unknown ids leave nothing behind
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # ---- loading and reading -------------------------------------------------------------------

    async def load_all(self) -> LoadReport:
        """Load every stored label set; a broken or incompatible entry is reported and skipped."""
        report = LoadReport()
        for label_set_id in await asyncio.to_thread(self.store.list_ids):
            try:
                record = await asyncio.to_thread(self.store.load, label_set_id)
                view = await self._servable_view(record)
            except (CorruptEntryError, TrustserveError, ValueError) as exc:
                reason = _reason(exc)
                report.failed[label_set_id] = self.failed[label_set_id] = reason
                log.error("label set %r not loaded: %s", label_set_id, reason)
                continue
            except LabelSetNotFoundError:
                continue
            self.entries[label_set_id] = Entry(record, view)
            report.loaded.append(label_set_id)
        log.info("label sets: %d loaded, %d failed", len(report.loaded), len(report.failed))
        return report

    async def _servable_view(self, record: StoredLabelSet) -> LabelSetView:
        """The view of a stored record, after checking it fits this server's model."""
        self.check_compatible(record.meta)
        check_arrays(record, self.engine)
        return await asyncio.to_thread(build_view, record, self.engine, self.index_params)

    def list_views(self) -> list[LabelSetView]:
        """Every servable label set, by id."""
        return [self.entries[k].view for k in sorted(self.entries)]

    def unavailable(self) -> dict[str, str]:
        """Stored label sets that could not be loaded, with the reason."""
        return dict(sorted(self.failed.items()))

    def get_view(self, label_set_id: str) -> LabelSetView:
        """The current immutable snapshot; ``NotFound`` for unknown ids, ``Unavailable`` for entries that
        failed to load."""
        return self.entry(label_set_id).view

    def get_meta(self, label_set_id: str) -> LabelSetMeta:
        """Metadata of the current version."""
        return self.entry(label_set_id).record.meta

    def entry(self, label_set_id: str) -> Entry:
        entry = self.entries.get(label_set_id)
        if entry is not None:
            return entry
        if label_set_id in self.failed:
            raise Unavailable(
                f"label set {shown(label_set_id)} is stored but could not be loaded: "
                f"{self.failed[label_set_id]}. Delete it or re-import it.",
                code="label_set_unavailable",
                retry_after_s=None,
            )
        raise not_found(label_set_id)

    def lock(self, label_set_id: str) -> asyncio.Lock:
        """The per-label-set write lock (held by every write of that label set)."""
        lock = self._locks.get(label_set_id)
        if lock is None:
            lock = self._locks[label_set_id] = asyncio.Lock()
        return lock

    def check_compatible(self, meta: LabelSetMeta) -> None:
        """``ModelMismatch`` unless ``meta`` was built with this server's model and image space."""
        if meta.model != self.engine.model_id or meta.aux_encoder != self.engine.aux_encoder_id:
            raise ModelMismatch(
                f"label set {meta.id!r} was built with model {shown(meta.model)} / image space "
                f"{shown(meta.aux_encoder)}; this server runs {self.engine.model_id!r} / "
                f"{self.engine.aux_encoder_id!r}"
            )

    # ---- writing -------------------------------------------------------------------------------

    def next_version(self, entry: Entry, expected_version: int | None, **meta_changes: Any) -> StoredLabelSet:
        """A copy of the current record at version + 1 (``Conflict`` when the client expected another)."""
        meta = entry.record.meta
        if expected_version is not None and expected_version != meta.version:
            raise Conflict(
                f"label set {meta.id!r} is at version {meta.version}, "
                f"the request expected {expected_version}",
                code="version_conflict",
                details={"expected_version": expected_version, "current_version": meta.version},
            )
        new_meta = meta.model_copy(
            update={"version": meta.version + 1, "updated_at": utc_now(), **meta_changes}
        )
        return StoredLabelSet(new_meta, {k: v.copy() for k, v in entry.record.arrays.items()})

    async def commit(self, record: StoredLabelSet, expected_version: int) -> LabelSetView:
        """Build the view (and its index), persist everything, then publish the view."""
        view = await asyncio.to_thread(build_view, record, self.engine, self.index_params)
        record.blobs = {} if view.index is None else {PROTOTYPE_INDEX: view.index.to_bytes()}
        try:
            await asyncio.to_thread(self.store.save, record, expected_version)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from exc
        except VersionConflictError as exc:
            raise Conflict(
                f"label set {record.meta.id!r} was changed by another writer (now version {exc.current}); "
                "reload and retry",
                code="version_conflict",
                details={"expected_version": exc.expected, "current_version": exc.current},
            ) from exc
        self.entries[record.meta.id] = Entry(record, view)
        self.failed.pop(record.meta.id, None)
        return view

    def labels(self, labels: Sequence[str], *, max_count: int | None = None) -> list[str]:
        """The one label validator (``app.engine.prompts``) at the label-set limits."""
        return validate_labels(
            list(labels),
            max_count=self.settings.max_label_set_labels if max_count is None else max_count,
            max_length=self.settings.max_label_length,
            min_count=1,
        )

    def _check_prompt_count(self, labels: int, templates: int) -> None:
        """``InvalidInput`` when a write would encode more than ``max_new_prompts_per_write`` prompts."""
        limit = self.settings.max_new_prompts_per_write
        if labels * templates > limit:
            raise InvalidInput(
                f"{labels} labels × {templates} templates = {labels * templates} prompts to encode; a "
                f"label-set write encodes at most {limit} (add the classes in several requests)",
                code="too_many_prompts",
            )

    async def create(
        self,
        label_set_id: str,
        labels: Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        description: str = "",
        model: str | None = None,
        aux_encoder: str | None = None,
        alpha: float | None = None,
        visual_temperature: float | None = None,
        trust_score: TrustScoreName | None = None,
        adaptation: AdaptationConfig | None = None,
        preprocess: PreprocessSetting | None = None,
        selection_mode: SelectionMode | None = None,
        image_space: ImageSpaceSetting | None = None,
    ) -> LabelSetView:
        """A new label set at version 1 with its text embeddings computed once; ``Conflict`` when the id
        exists. ``preprocess`` defaults to the preset's policy; ``selection_mode`` (α chosen on evidence) to
        the preset's ``trust.selection``, or ``fixed`` when ``alpha`` is given; ``image_space`` to ``auto``
        when the model has an independent space and α is selected, else ``own``."""
        if not is_valid_slug(label_set_id):
            raise InvalidInput(
                f"label-set id {shown(label_set_id)} must match ^[a-z0-9][a-z0-9-_]{{0,63}}$",
                code="invalid_id",
            )
        for asked, have, what in ((model, self.engine.model_id, "model"),
                                  (aux_encoder, self.engine.aux_encoder_id, "aux_encoder")):  # fmt: skip
            if asked is not None and asked != have:
                raise InvalidInput(
                    f"this server runs {what} {have!r}, not {shown(asked)}", code="model_mismatch"
                )
        cleaned = self.labels(labels)
        preset = self.engine.preset
        mode = selection_mode or ("fixed" if alpha is not None else preset.trust.selection)
        spaces = self.engine.image_spaces()
        if image_space is None:
            image_space = "auto" if len(spaces) > 1 and mode == "auto" else "own"
        elif image_space != "auto" and image_space not in spaces:
            raise InvalidInput(
                f"this server's model has no {image_space!r} image space (it has {spaces})",
                code="no_independent_image_space",
            )
        chosen_templates = validate_templates(list(templates) if templates else None, preset.templates)
        self._check_prompt_count(len(cleaned), len(chosen_templates))
        async with self.lock(label_set_id):
            if label_set_id in self.entries:
                raise Conflict(f"label set {shown(label_set_id)} already exists", code="label_set_exists")
            text = await self.engine.text_embeddings(
                cleaned, chosen_templates, max_new_prompts=self.settings.max_new_prompts_per_write
            )
            meta = LabelSetMeta(
                id=label_set_id,
                description=description,
                version=1,
                labels=cleaned,
                templates=chosen_templates,
                model=self.engine.model_id,
                aux_encoder=self.engine.aux_encoder_id,
                embedding_dim=int(text.shape[1]),
                alpha=preset.trust.alpha if alpha is None else alpha,
                visual_temperature=(
                    preset.trust.visual_temperature if visual_temperature is None else visual_temperature
                ),
                trust_score=trust_score or preset.trust.score,
                adaptation=adaptation or AdaptationConfig(),
                preprocess=preprocess or preset.preprocess,
                policy=preset.preprocess if preprocess in (None, "auto") else preprocess,
                selection_mode=mode,
                image_space=image_space,
                space="independent" if image_space == "independent" else "own",
            )
            arrays: dict[str, np.ndarray] = {
                TEXT: text.astype(np.float32),
                SUMS: np.zeros((len(cleaned), 0)),
                COUNTS: np.zeros(len(cleaned), np.int64),
            }
            return await self.commit(StoredLabelSet(meta, arrays), expected_version=0)

    async def delete(self, label_set_id: str, expected_version: int | None = None) -> None:
        """Remove a label set (also one that failed to load)."""
        async with self.lock(label_set_id):
            if label_set_id not in self.entries and label_set_id not in self.failed:
                raise not_found(label_set_id)
            if expected_version is not None and label_set_id in self.entries:
                self.next_version(self.entries[label_set_id], expected_version)  # Conflict when stale
            try:
                await asyncio.to_thread(self.store.delete, label_set_id, expected_version)
            except LabelSetNotFoundError as exc:
                raise not_found(label_set_id) from exc
            except VersionConflictError as exc:
                raise Conflict(str(exc), code="version_conflict") from exc
            except StoreUnavailableError as exc:
                raise store_unavailable(exc) from exc
            self.entries.pop(label_set_id, None)
            self.failed.pop(label_set_id, None)

    async def update(
        self,
        label_set_id: str,
        *,
        expected_version: int | None = None,
        description: str | None = None,
        alpha: float | None = None,
        visual_temperature: float | None = None,
        trust_score: TrustScoreName | None = None,
        adaptation: AdaptationConfig | None = None,
        selection_mode: SelectionMode | None = None,
        preprocess: PreprocessSetting | None = None,
        image_space: ImageSpaceSetting | None = None,
    ) -> LabelSetView:
        """Change settings. A change to what the decision score is computed from drops the calibration
        (it no longer holds): α, T_v, the trust score, and an adaptation change that moves prototypes
        (disabling it clears the cache; a new ``max_weight`` re-blends cached prototypes). An explicit
        ``alpha`` fixes α (no more self-selection) unless ``selection_mode`` says ``auto``."""
        async with self.lock(label_set_id):
            entry = self.entry(label_set_id)
            meta = entry.record.meta
            changes: dict[str, Any] = {}
            for name, value in (("description", description), ("alpha", alpha),
                                ("visual_temperature", visual_temperature), ("trust_score", trust_score),
                                ("adaptation", adaptation)):  # fmt: skip
                if value is not None and value != getattr(meta, name):
                    changes[name] = value
            reencode = preprocess is not None and preprocess != meta.preprocess
            respace = image_space is not None and image_space != meta.image_space
            reencode = reencode or respace
            mode = selection_mode or ("fixed" if alpha is not None else None)
            if mode is not None and mode != meta.selection_mode:
                changes["selection_mode"] = mode
                if mode == "fixed":
                    changes["selection"] = None
            if not changes and not reencode:
                return entry.view
            moves_prototypes = (
                adaptation is not None
                and "adaptation" in changes
                and has_cache(entry.record.arrays)
                and (not adaptation.enabled or adaptation.max_weight != meta.adaptation.max_weight)
            )
            if changes.keys() & SCORE_SETTINGS or moves_prototypes or reencode:
                changes["calibration"] = None
            record = self.next_version(entry, expected_version, **changes)
            if preprocess is not None and preprocess != meta.preprocess:
                try:
                    change_preprocess(record, preprocess, self.engine.preset.preprocess)
                except ValueError as exc:
                    raise Conflict(str(exc), code="preprocess_needs_support_encodings") from exc
            if respace:
                assert image_space is not None
                spaces = self.engine.image_spaces()
                if image_space != "auto" and image_space not in spaces:
                    raise InvalidInput(
                        f"this server's model has no {image_space!r} image space (it has {spaces})",
                        code="no_independent_image_space",
                    )
                try:
                    change_image_space(record, image_space, list(spaces))
                except ValueError as exc:
                    raise Conflict(str(exc), code="image_space_needs_support_encodings") from exc
            if adaptation is not None and not adaptation.enabled:
                drop_cache(record.arrays)
            return await self.commit(record, meta.version)

    async def add_classes(
        self, label_set_id: str, labels: Sequence[str], expected_version: int | None = None
    ) -> LabelSetView:
        """Append labels (their text embeddings are computed now); drops the calibration."""
        limit = self.settings.max_label_set_labels
        async with self.lock(label_set_id):
            entry = self.entry(label_set_id)
            meta = entry.record.meta
            new = self.labels(labels, max_count=max(1, limit - len(meta.labels)))
            existing = {label.casefold() for label in meta.labels}
            clash = sorted(label for label in new if label.casefold() in existing)
            if clash:
                raise Conflict(
                    f"labels already in {shown(label_set_id)} (up to case): {[shown(c) for c in clash[:10]]}",
                    code="label_exists",
                )
            if len(meta.labels) + len(new) > limit:
                raise InvalidInput(f"a label set holds at most {limit} labels")
            self._check_prompt_count(len(new), len(meta.templates))
            text = await self.engine.text_embeddings(
                new, list(meta.templates), max_new_prompts=self.settings.max_new_prompts_per_write
            )
            record = self.next_version(entry, expected_version, labels=[*meta.labels, *new], calibration=None)
            arrays = record.arrays
            arrays[TEXT] = np.concatenate([arrays[TEXT], text.astype(np.float32)])
            arrays[SUMS] = np.concatenate([arrays[SUMS], np.zeros((len(new), arrays[SUMS].shape[1]))])
            arrays[COUNTS] = np.concatenate([arrays[COUNTS], np.zeros(len(new), np.int64)])
            return await self.commit(record, meta.version)

    async def remove_class(
        self, label_set_id: str, label: str, expected_version: int | None = None
    ) -> LabelSetView:
        """Drop one class with its text embedding, prototype and cache entries; drops the calibration."""
        async with self.lock(label_set_id):
            entry = self.entry(label_set_id)
            meta = entry.record.meta
            if label not in meta.labels:
                raise NotFound(
                    f"label set {shown(label_set_id)} has no class {shown(label)}", code="class_not_found"
                )
            if len(meta.labels) == 1:
                raise InvalidInput("cannot remove the last class; delete the label set instead")
            idx = meta.labels.index(label)
            labels = [x for x in meta.labels if x != label]
            record = self.next_version(entry, expected_version, labels=labels, calibration=None)
            arrays = record.arrays
            for name in (TEXT, SUMS, COUNTS):
                arrays[name] = np.delete(arrays[name], idx, axis=0)
            support_features.remove_class(arrays, idx)
            if CACHE_CLASS in arrays:
                keep = arrays[CACHE_CLASS] != idx
                arrays[CACHE_FEATURES] = arrays[CACHE_FEATURES][keep]
                arrays[CACHE_SCORES] = arrays[CACHE_SCORES][keep]
                cls = arrays[CACHE_CLASS][keep]
                arrays[CACHE_CLASS] = np.where(cls > idx, cls - 1, cls)
            return await self.commit(record, meta.version)

    # ---- health and replicas sharing a database (app/labelsets/sync.py) -------------------------

    async def readiness_problem(self) -> str | None:
        """For /readyz: None while the store can take writes. Entries that failed to load do not make the
        server unready (they are listed by GET /v1/label-sets)."""
        root = getattr(self.store, "root", None)
        if root is not None and not os.access(root, os.W_OK):
            return f"label-set store {root} is not writable"
        return None

    def local_versions(self) -> dict[str, int]:
        """Version of every label set this process serves (compared with the store by the watcher)."""
        return {label_set_id: entry.view.version for label_set_id, entry in self.entries.items()}

    async def refresh(self, label_set_id: str, version: int | None = None) -> None:
        """Another replica changed this label set (to ``version``; None: unknown, e.g. re-created): re-read
        it and rebuild only its view and index, or drop it when it was deleted. Nothing is read when, once
        this replica's own write of it (if any) has finished, it already serves that version. Raises
        (after recording the reason) when the stored entry cannot be served."""
        async with self.lock(label_set_id):  # waits for a write of ours that is publishing right now
            entry = self.entries.get(label_set_id)
            if version is not None and entry is not None and entry.view.version == version:
                return  # our own write, whose notification overtook its publication
            try:
                record = await asyncio.to_thread(self.store.load, label_set_id)
            except LabelSetNotFoundError:
                self.entries.pop(label_set_id, None)
                self.failed.pop(label_set_id, None)
                return
            except CorruptEntryError as exc:
                self.entries.pop(label_set_id, None)
                self.failed[label_set_id] = exc.reason
                raise
            if entry is not None and entry.record.meta == record.meta:
                return  # already serving exactly this version
            try:
                view = await self._servable_view(record)
            except (TrustserveError, ValueError) as exc:
                self.entries.pop(label_set_id, None)
                self.failed[label_set_id] = _reason(exc)
                raise
            self.entries[label_set_id] = Entry(record, view)
            self.failed.pop(label_set_id, None)


def _reason(exc: Exception) -> str:
    """Why an entry cannot be served, for the list of unavailable label sets."""
    if isinstance(exc, CorruptEntryError):
        return exc.reason
    if isinstance(exc, TrustserveError):
        return exc.message
    return str(exc)
