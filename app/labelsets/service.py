"""Label-set business logic: create / change / delete label sets, register support images, calibrate reject
rules, the opt-in test-time prototype cache, and the immutable views classification reads.

Every change is a whole-label-set versioned write through ``LabelSetStore`` (optimistic concurrency), made
under a per-label-set lock, so concurrent requests never lose an update. Scoring for calibration uses
``app.engine.scoring.score_batch`` — the same code classify uses — so a threshold is applied to exactly
the numbers it was chosen on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from app.api.errors import APIError, conflict, not_found, unprocessable
from app.api.validation import shown, validate_labels, validate_templates
from app.config import Settings
from app.engine.batcher import QueueFullError
from app.engine.scoring import ScoredBatch, score_batch
from app.labelsets.archive import as_first_version
from app.labelsets.index import IndexParams, VectorIndex
from app.labelsets.live_trust import fit_live_trust
from app.labelsets.models import (
    AdaptationConfig,
    CalibrationRecord,
    CalibrationRule,
    LabelSetMeta,
    LabelSetView,
    TrustScoreName,
    is_valid_slug,
    utc_now,
)
from app.labelsets.postgres_store import StoreUnavailableError
from app.labelsets.store import (
    CorruptEntryError,
    LabelSetNotFoundError,
    LabelSetStore,
    StoredLabelSet,
    VersionConflictError,
)
from app.trust.calibration import (
    CalibrationError,
    calibrate_target_coverage,
    calibrate_target_risk,
    min_calibration_size,
    tune_trustvlm,
)
from app.trust.conformal import DEFAULT_EPSILON, ConformalMethod
from app.trust.prototypes import PrototypeBank
from app.trust.scores import l2_normalize

log = logging.getLogger(__name__)

# Array names inside a stored label set.
TEXT = "text_embeddings"
SUMS = "prototype_sums"
COUNTS = "prototype_counts"
CACHE_CLASS = "cache_class"
CACHE_FEATURES = "cache_features"
CACHE_SCORES = "cache_scores"
PROTOTYPE_INDEX = "prototype_index"
TEXT_INDEX = "text_index"


@dataclass
class LoadReport:
    """Outcome of ``load_all``: loaded ids, and the reason each other entry could not be served."""

    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class CalibrationRequest:
    """What to calibrate: a target risk with guarantee at level ``delta``, or a target coverage."""

    rule: CalibrationRule
    target_risk: float | None = None
    delta: float = 0.05
    target_coverage: float | None = None
    tune: bool = False
    score: TrustScoreName | None = None
    seed: int = 0
    epsilon: float = DEFAULT_EPSILON  # miscoverage of the conformal prediction sets
    conformal_method: ConformalMethod = "lac"


@dataclass
class _Entry:
    record: StoredLabelSet
    view: LabelSetView


def adapted_prototypes(
    sums: np.ndarray,
    counts: np.ndarray,
    cache_class: np.ndarray,
    cache_features: np.ndarray,
    max_weight: float,
) -> np.ndarray:
    """Support prototypes blended with the test-time cache, with a hard cap on how far they can move.

    For a class with support mean m_s and cache mean m_c (raw features), the prototype is
    normalize((1 − w)·normalize(m_s) + w·normalize(m_c)) with w = min(n_c / (n_s + n_c), max_weight).
    Because w ≤ max_weight < 0.5, cos(P, P_support) ≥ 1 − 2·max_weight whatever enters the cache: the
    prototype cannot drift without bound. Classes without support images are not adapted.
    """
    bank = PrototypeBank.from_arrays(sums, counts)
    support = bank.prototypes().astype(np.float64)
    if cache_class.size == 0:
        return support.astype(np.float32)
    c, f = sums.shape
    cache_sum = np.zeros((c, f))
    np.add.at(cache_sum, cache_class, cache_features.astype(np.float64))
    n_cache = np.bincount(cache_class, minlength=c)
    weight = np.minimum(n_cache / np.maximum(counts + n_cache, 1), max_weight)
    weight = np.where(counts > 0, weight, 0.0)[:, None]
    blended = (1 - weight) * support + weight * l2_normalize(cache_sum)
    return l2_normalize(blended).astype(np.float32)


class LabelSetService:
    """Owns every label set in memory (as immutable views) and writes through to the store."""

    def __init__(self, store: LabelSetStore, engine: Any, settings: Settings) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.index_params = IndexParams(
            hnsw_threshold=int(getattr(settings, "index_hnsw_threshold", IndexParams.hnsw_threshold))
        )
        self.text_index_min_classes = int(getattr(settings, "text_index_min_classes", 10_000))
        self.max_labels = settings.max_label_set_labels
        self.max_calibration_images = settings.max_calibration_images
        self._entries: dict[str, _Entry] = {}
        self._failed: dict[str, str] = {}
        # a lock lives while someone holds or awaits it: unknown ids leave nothing behind
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._background: set[asyncio.Task[bool]] = set()

    # ---- loading and reading -------------------------------------------------------------------

    async def load_all(self) -> LoadReport:
        """Load every stored label set; a broken or incompatible entry is reported and skipped."""
        report = LoadReport()
        for label_set_id in await asyncio.to_thread(self.store.list_ids):
            try:
                record = await asyncio.to_thread(self.store.load, label_set_id)
                self._check_compatible(record.meta)
                self._check_arrays(record)
                view = await asyncio.to_thread(self._build_view, record)
            except (CorruptEntryError, APIError, ValueError) as exc:
                reason = (
                    exc.reason if isinstance(exc, CorruptEntryError) else str(getattr(exc, "message", exc))
                )
                report.failed[label_set_id] = reason
                self._failed[label_set_id] = reason
                log.error("label set %r not loaded: %s", label_set_id, reason)
                continue
            except LabelSetNotFoundError:
                continue
            self._entries[label_set_id] = _Entry(record, view)
            report.loaded.append(label_set_id)
        log.info("label sets: %d loaded, %d failed", len(report.loaded), len(report.failed))
        return report

    def list_views(self) -> list[LabelSetView]:
        """Every servable label set, by id."""
        return [self._entries[k].view for k in sorted(self._entries)]

    def unavailable(self) -> dict[str, str]:
        """Stored label sets that could not be loaded, with the reason."""
        return dict(sorted(self._failed.items()))

    def get_view(self, label_set_id: str) -> LabelSetView:
        """The current immutable snapshot; 404 for unknown ids, 503 for entries that failed to load."""
        return self._entry(label_set_id).view

    def get_meta(self, label_set_id: str) -> LabelSetMeta:
        """Metadata of the current version."""
        return self._entry(label_set_id).record.meta

    def _entry(self, label_set_id: str) -> _Entry:
        entry = self._entries.get(label_set_id)
        if entry is not None:
            return entry
        if label_set_id in self._failed:
            raise APIError(
                503,
                "label_set_unavailable",
                f"label set {shown(label_set_id)} is stored but could not be loaded: "
                f"{self._failed[label_set_id]}. Delete it or re-import it.",
            )
        raise not_found(f"label set {shown(label_set_id)} does not exist", code="label_set_not_found")

    def _lock(self, label_set_id: str) -> asyncio.Lock:
        lock = self._locks.get(label_set_id)
        if lock is None:
            lock = self._locks[label_set_id] = asyncio.Lock()
        return lock

    def _check_importable(self, record: StoredLabelSet) -> None:
        """The validation of create + add images + calibrate, applied to an imported record (422)."""
        meta = record.meta
        labels = self._validate_labels(meta.labels)
        if labels != meta.labels:
            raise unprocessable("labels must not start or end with blanks", code="invalid_labels")
        if not meta.templates:
            raise unprocessable("an imported label set needs its templates", code="invalid_templates")
        validate_templates(list(meta.templates), [])
        if len(meta.description) > 2000:
            raise unprocessable("description holds at most 2000 characters", code="invalid_archive")
        numbers = {
            "alpha": (meta.alpha, 0.0, 100.0),
            "visual_temperature": (meta.visual_temperature, 0.0, 10.0),
        }
        for name, (value, low, high) in numbers.items():
            if not (math.isfinite(value) and low <= value <= high):
                raise unprocessable(f"{name} must be in [{low}, {high}], got {value}", code="invalid_archive")
        cal = meta.calibration
        if cal is not None:
            values = (cal.threshold, cal.target, cal.coverage, cal.risk, cal.alpha, cal.visual_temperature)
            if not all(math.isfinite(v) for v in values) or cal.n < 1:
                raise unprocessable("the calibration record holds non-finite numbers", code="invalid_archive")
        try:
            self._check_arrays(record)
        except ValueError as exc:
            raise unprocessable(f"invalid label-set arrays: {exc}", code="invalid_archive") from None

    def _check_arrays(self, record: StoredLabelSet) -> None:
        """``ValueError`` unless the arrays are exactly what this server's model would have stored for the
        labels: names, dtypes, shapes, embedding and feature widths, finite values, counts ≥ 0, a bounded
        adaptation cache. Run on import and when stored entries are loaded (a mismatch is then reported as
        unavailable instead of failing every classify)."""
        meta, arrays = record.meta, record.arrays
        required, optional = {TEXT, SUMS, COUNTS}, {CACHE_CLASS, CACHE_FEATURES, CACHE_SCORES}
        names = set(arrays)
        if not required <= names or names - required - optional:
            raise ValueError(
                f"expected arrays {sorted(required)} (+ the adaptation cache), got {sorted(names)}"
            )
        c = len(meta.labels)
        text, sums, counts = arrays[TEXT], arrays[SUMS], arrays[COUNTS]
        dim = getattr(getattr(self.engine, "backend", None), "embedding_dim", None)
        if (
            text.dtype.kind != "f"
            or text.ndim != 2
            or text.shape[0] != c
            or text.shape[1] != meta.embedding_dim
        ):
            raise ValueError(
                f"text embeddings {text.dtype}{text.shape}, expected ({c}, {meta.embedding_dim})"
            )
        if dim is not None and text.shape[1] != int(dim):
            raise ValueError(f"text embeddings have dimension {text.shape[1]}; this model's is {dim}")
        if not np.isfinite(text).all() or not np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-3):
            raise ValueError("text embeddings must be finite and L2-normalised")
        if counts.dtype.kind not in "iu" or counts.shape != (c,) or (counts < 0).any():
            raise ValueError(f"prototype counts {counts.dtype}{counts.shape} must be ({c},) integers ≥ 0")
        feature_dim = getattr(self.engine, "feature_dim", None)
        if sums.dtype.kind != "f" or sums.ndim != 2 or sums.shape[0] != c or not np.isfinite(sums).all():
            raise ValueError(f"prototype sums {sums.dtype}{sums.shape} must be finite ({c}, F)")
        if sums.shape[1] == 0:
            if counts.any() or meta.feature_dim is not None:
                raise ValueError("support counts without prototype sums")
        elif sums.shape[1] != meta.feature_dim or (feature_dim is not None and sums.shape[1] != feature_dim):
            raise ValueError(
                f"prototype sums have width {sums.shape[1]}; this model's image space has {feature_dim}"
            )
        present = [name for name in optional if name in arrays]
        if present:
            if len(present) != len(optional) or sums.shape[1] == 0:
                raise ValueError("an adaptation cache needs class, features and scores (and prototypes)")
            cls, feats, scores = arrays[CACHE_CLASS], arrays[CACHE_FEATURES], arrays[CACHE_SCORES]
            n = cls.shape[0] if cls.ndim == 1 else -1
            if (
                cls.dtype.kind not in "iu"
                or n < 0
                or n > c * meta.adaptation.max_per_class
                or ((cls < 0) | (cls >= c)).any()
                or feats.shape != (n, sums.shape[1])
                or scores.shape != (n,)
                or not (np.isfinite(feats).all() and np.isfinite(scores).all())
            ):
                raise ValueError("the adaptation cache does not match the labels and prototypes")

    def _check_compatible(self, meta: LabelSetMeta) -> None:
        if meta.model != self.engine.model_id or meta.aux_encoder != self.engine.aux_encoder_id:
            raise APIError(
                409,
                "label_set_model_mismatch",
                f"label set {meta.id!r} was built with model {shown(meta.model)} / image space "
                f"{shown(meta.aux_encoder)}; this server runs {self.engine.model_id!r} / "
                f"{self.engine.aux_encoder_id!r}",
            )

    # ---- building views ------------------------------------------------------------------------

    def _build_view(self, record: StoredLabelSet) -> LabelSetView:
        """Immutable snapshot: prototypes (with the adaptation cache), FAISS indexes (stored or rebuilt)."""
        meta, arrays = record.meta, record.arrays
        text = np.ascontiguousarray(arrays[TEXT], dtype=np.float32)
        sums, counts = arrays[SUMS], arrays[COUNTS].astype(np.int64)
        n_classes = len(meta.labels)
        if text.shape[0] != n_classes or sums.shape[0] != n_classes or counts.shape != (n_classes,):
            raise ValueError(
                f"array shapes do not match {n_classes} labels: text {text.shape}, sums {sums.shape}, "
                f"counts {counts.shape}"
            )
        cache_class = arrays.get(CACHE_CLASS, np.zeros(0, np.int64)).astype(np.int64)
        has_prototype = counts > 0
        if sums.shape[1] == 0:
            prototypes = np.zeros((n_classes, 0), np.float32)
        else:
            prototypes = adapted_prototypes(
                sums,
                counts,
                cache_class,
                arrays.get(CACHE_FEATURES, np.zeros((0, sums.shape[1]), np.float32)),
                meta.adaptation.max_weight,
            )
        index = self._index_from(record.blobs.get(PROTOTYPE_INDEX), prototypes, has_prototype)
        text_index = None
        if n_classes >= self.text_index_min_classes:
            text_index = self._index_from(record.blobs.get(TEXT_INDEX), text, np.ones(n_classes, bool))
        for array in (text, prototypes, has_prototype, counts):
            array.setflags(write=False)
        return LabelSetView(
            id=meta.id,
            version=meta.version,
            labels=tuple(meta.labels),
            templates=tuple(meta.templates),
            model=meta.model,
            aux_encoder=meta.aux_encoder,
            text_embeddings=text,
            prototypes=prototypes,
            has_prototype=has_prototype,
            support_counts=counts,
            index=index,
            text_index=text_index,
            alpha=meta.alpha,
            visual_temperature=meta.visual_temperature,
            trust_score=meta.trust_score,
            calibration=meta.calibration,
            adaptation=meta.adaptation,
            adapted=bool(cache_class.size),
        )

    def _index_from(self, blob: bytes | None, vectors: np.ndarray, present: np.ndarray) -> VectorIndex | None:
        """The stored index when it matches the vectors, else a fresh build."""
        if vectors.shape[1] == 0 or not present.any():
            return None
        if blob is not None:
            stored = VectorIndex.from_bytes(blob)
            if stored.ntotal == int(present.sum()) and stored.dim == vectors.shape[1]:
                return stored
            log.warning("stored index does not match its vectors; rebuilding")
        ids = np.flatnonzero(present).astype(np.int64)
        return VectorIndex.build(vectors[ids], ids, self.index_params)

    # ---- writing -------------------------------------------------------------------------------

    async def _commit(self, record: StoredLabelSet, expected_version: int) -> LabelSetView:
        """Build the view (and its indexes), persist everything, then publish the view."""
        view = await asyncio.to_thread(self._build_view, record)
        record.blobs = {}
        if view.index is not None:
            record.blobs[PROTOTYPE_INDEX] = view.index.to_bytes()
        if view.text_index is not None:
            record.blobs[TEXT_INDEX] = view.text_index.to_bytes()
        try:
            await asyncio.to_thread(self.store.save, record, expected_version)
        except StoreUnavailableError as exc:
            raise store_unavailable(exc) from exc
        except VersionConflictError as exc:
            raise conflict(
                f"label set {record.meta.id!r} was changed by another writer (now version {exc.current}); "
                "reload and retry",
                code="version_conflict",
                details={"expected_version": exc.expected, "current_version": exc.current},
            ) from exc
        self._entries[record.meta.id] = _Entry(record, view)
        self._failed.pop(record.meta.id, None)
        return view

    def _next(self, entry: _Entry, expected_version: int | None, **meta_changes: Any) -> StoredLabelSet:
        """A copy of the current record at version + 1 (checks the client's expected version)."""
        meta = entry.record.meta
        if expected_version is not None and expected_version != meta.version:
            raise conflict(
                f"label set {meta.id!r} is at version {meta.version}, "
                f"the request expected {expected_version}",
                code="version_conflict",
                details={"expected_version": expected_version, "current_version": meta.version},
            )
        new_meta = meta.model_copy(
            update={"version": meta.version + 1, "updated_at": utc_now(), **meta_changes}
        )
        return StoredLabelSet(new_meta, {k: v.copy() for k, v in entry.record.arrays.items()})

    def _validate_labels(self, labels: Sequence[str], *, max_count: int | None = None) -> list[str]:
        """The one label validator (``app.api.validation``): 1..max labels, each stripped, 1..max_label_length
        characters, no control characters, usable as a URL path segment, unique up to case."""
        return validate_labels(
            list(labels),
            max_count=self.max_labels if max_count is None else max_count,
            max_length=self.settings.max_label_length,
            min_count=1,
        )

    def _check_prompt_count(self, labels: int, templates: int) -> None:
        """422 when a write would encode more than ``max_new_prompts_per_write`` prompts."""
        limit = self.settings.max_new_prompts_per_write
        if labels * templates > limit:
            raise unprocessable(
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
    ) -> LabelSetView:
        """A new label set at version 1 with its text embeddings computed once; 409 when the id exists."""
        if not is_valid_slug(label_set_id):
            raise unprocessable(
                f"label-set id {shown(label_set_id)} must match ^[a-z0-9][a-z0-9-_]{{0,63}}$",
                code="invalid_id",
            )
        for asked, have, what in ((model, self.engine.model_id, "model"),
                                  (aux_encoder, self.engine.aux_encoder_id, "aux_encoder")):  # fmt: skip
            if asked is not None and asked != have:
                raise unprocessable(
                    f"this server runs {what} {have!r}, not {shown(asked)}", code="model_mismatch"
                )
        cleaned = self._validate_labels(labels)
        preset = self.engine.preset
        templates = validate_templates(list(templates) if templates else None, preset.templates)
        self._check_prompt_count(len(cleaned), len(templates))
        async with self._lock(label_set_id):
            if label_set_id in self._entries:
                raise conflict(f"label set {shown(label_set_id)} already exists", code="label_set_exists")
            text = await self.engine.text_embeddings(
                cleaned, templates, max_new_prompts=self.settings.max_new_prompts_per_write
            )
            meta = LabelSetMeta(
                id=label_set_id,
                description=description,
                version=1,
                labels=cleaned,
                templates=templates,
                model=self.engine.model_id,
                aux_encoder=self.engine.aux_encoder_id,
                embedding_dim=int(text.shape[1]),
                alpha=preset.trust.alpha if alpha is None else alpha,
                visual_temperature=(
                    preset.trust.visual_temperature if visual_temperature is None else visual_temperature
                ),
                trust_score=trust_score or _preset_score(preset.trust.score),
                adaptation=adaptation or AdaptationConfig(),
            )
            arrays = {
                TEXT: text.astype(np.float32),
                SUMS: np.zeros((len(cleaned), 0)),
                COUNTS: np.zeros(len(cleaned), np.int64),
            }
            return await self._commit(StoredLabelSet(meta, arrays), expected_version=0)

    async def delete(self, label_set_id: str, expected_version: int | None = None) -> None:
        """Remove a label set (also one that failed to load)."""
        async with self._lock(label_set_id):
            if label_set_id not in self._entries and label_set_id not in self._failed:
                raise not_found(f"label set {shown(label_set_id)} does not exist", code="label_set_not_found")
            if expected_version is not None and label_set_id in self._entries:
                self._next(self._entries[label_set_id], expected_version)  # raises 409 when stale
            try:
                await asyncio.to_thread(self.store.delete, label_set_id, expected_version)
            except LabelSetNotFoundError as exc:
                raise not_found(
                    f"label set {shown(label_set_id)} does not exist", code="label_set_not_found"
                ) from exc
            except VersionConflictError as exc:
                raise conflict(str(exc), code="version_conflict") from exc
            except StoreUnavailableError as exc:
                raise store_unavailable(exc) from exc
            self._entries.pop(label_set_id, None)
            self._failed.pop(label_set_id, None)

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
    ) -> LabelSetView:
        """Change settings; a change that alters the trust score drops the calibration (it no longer
        holds)."""
        async with self._lock(label_set_id):
            entry = self._entry(label_set_id)
            meta = entry.record.meta
            changes: dict[str, Any] = {}
            for name, value in (("description", description), ("alpha", alpha),
                                ("visual_temperature", visual_temperature), ("trust_score", trust_score),
                                ("adaptation", adaptation)):  # fmt: skip
                if value is not None and value != getattr(meta, name):
                    changes[name] = value
            if not changes:
                return entry.view
            if changes.keys() & {"alpha", "visual_temperature", "trust_score"}:
                changes["calibration"] = None
            record = self._next(entry, expected_version, **changes)
            if adaptation is not None and not adaptation.enabled:
                _drop_cache(record.arrays)
            return await self._commit(record, meta.version)

    async def add_classes(
        self, label_set_id: str, labels: Sequence[str], expected_version: int | None = None
    ) -> LabelSetView:
        """Append labels (their text embeddings are computed now); drops the calibration."""
        async with self._lock(label_set_id):
            entry = self._entry(label_set_id)
            meta = entry.record.meta
            new = self._validate_labels(labels, max_count=max(1, self.max_labels - len(meta.labels)))
            existing = {label.casefold() for label in meta.labels}
            clash = sorted(label for label in new if label.casefold() in existing)
            if clash:
                raise conflict(
                    f"labels already in {shown(label_set_id)} (up to case): {[shown(c) for c in clash[:10]]}",
                    code="label_exists",
                )
            if len(meta.labels) + len(new) > self.max_labels:
                raise unprocessable(f"a label set holds at most {self.max_labels} labels")
            self._check_prompt_count(len(new), len(meta.templates))
            text = await self.engine.text_embeddings(
                new, list(meta.templates), max_new_prompts=self.settings.max_new_prompts_per_write
            )
            record = self._next(entry, expected_version, labels=[*meta.labels, *new], calibration=None)
            arrays = record.arrays
            arrays[TEXT] = np.concatenate([arrays[TEXT], text.astype(np.float32)])
            arrays[SUMS] = np.concatenate([arrays[SUMS], np.zeros((len(new), arrays[SUMS].shape[1]))])
            arrays[COUNTS] = np.concatenate([arrays[COUNTS], np.zeros(len(new), np.int64)])
            return await self._commit(record, meta.version)

    async def remove_class(
        self, label_set_id: str, label: str, expected_version: int | None = None
    ) -> LabelSetView:
        """Drop one class with its text embedding, prototype and cache entries; drops the calibration."""
        async with self._lock(label_set_id):
            entry = self._entry(label_set_id)
            meta = entry.record.meta
            if label not in meta.labels:
                raise not_found(
                    f"label set {shown(label_set_id)} has no class {shown(label)}", code="class_not_found"
                )
            if len(meta.labels) == 1:
                raise unprocessable("cannot remove the last class; delete the label set instead")
            idx = meta.labels.index(label)
            labels = [x for x in meta.labels if x != label]
            record = self._next(entry, expected_version, labels=labels, calibration=None)
            arrays = record.arrays
            for name in (TEXT, SUMS, COUNTS):
                arrays[name] = np.delete(arrays[name], idx, axis=0)
            if CACHE_CLASS in arrays:
                keep = arrays[CACHE_CLASS] != idx
                arrays[CACHE_FEATURES] = arrays[CACHE_FEATURES][keep]
                arrays[CACHE_SCORES] = arrays[CACHE_SCORES][keep]
                cls = arrays[CACHE_CLASS][keep]
                arrays[CACHE_CLASS] = np.where(cls > idx, cls - 1, cls)
            return await self._commit(record, meta.version)

    async def encode(self, images: Sequence[Image.Image] | Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, aux features) for decoded images or uploaded files (the engine decodes files a batch
        at a time, after checking the request's pixel budget)."""
        try:
            if all(isinstance(image, bytes) for image in images):
                encoded = await self.engine.encode_uploads(list(images))  # type: ignore[arg-type]
            else:
                encoded = await self.engine.encode_images(list(images))  # type: ignore[arg-type]
        except QueueFullError as exc:
            raise APIError(
                429,
                "overloaded",
                f"the model queue is full; retry later ({exc})",
                headers={"Retry-After": "5"},
            ) from None
        except TimeoutError:
            raise APIError(
                503, "timeout", "encoding the images timed out (server busy); retry later",
                headers={"Retry-After": "5"},
            ) from None  # fmt: skip
        return encoded.embeddings, encoded.aux_features

    def _class_indices(self, meta: LabelSetMeta, labels: Sequence[str]) -> np.ndarray:
        """Label names (or their decimal indices) -> class indices; 422 listing unknown ones."""
        position = {label: i for i, label in enumerate(meta.labels)}
        out, unknown = [], []
        for label in labels:
            if label in position:
                out.append(position[label])
            elif label.isdigit() and int(label) < len(meta.labels):
                out.append(int(label))
            else:
                unknown.append(label)
        if unknown:
            listed = [shown(u) for u in sorted(set(unknown))[:10]]
            raise unprocessable(
                f"unknown class(es) for label set {meta.id!r}: {listed}; "
                f"known: {meta.labels[:20]}{' …' if len(meta.labels) > 20 else ''}",
                code="unknown_class",
            )
        return np.asarray(out, dtype=np.int64)

    async def add_support_images(
        self,
        label_set_id: str,
        labels: Sequence[str],
        images: Sequence[Image.Image],
        expected_version: int | None = None,
    ) -> tuple[LabelSetView, dict[str, int]]:
        """Add support images (any sizes; each is preprocessed on its own) to their classes' prototypes.
        All-or-nothing: unknown classes are rejected before anything is encoded. Drops the calibration."""
        if len(labels) != len(images):
            raise unprocessable(
                f"got {len(images)} images but {len(labels)} labels; give one label per image"
            )
        if not images:
            raise unprocessable("no support images given")
        classes = self._class_indices(self.get_meta(label_set_id), labels)
        _, features = await self.encode(images)
        async with self._lock(label_set_id):
            entry = self._entry(label_set_id)
            meta = entry.record.meta
            classes = self._class_indices(meta, labels)  # re-check: a class may have gone meanwhile
            if meta.feature_dim is not None and features.shape[1] != meta.feature_dim:
                raise conflict(
                    f"image features have dim {features.shape[1]}, label set uses {meta.feature_dim}"
                )
            record = self._next(entry, expected_version, feature_dim=int(features.shape[1]), calibration=None)
            sums = record.arrays[SUMS]
            if sums.shape[1] == 0:
                sums = np.zeros((len(meta.labels), features.shape[1]))
            bank = PrototypeBank.from_arrays(sums, record.arrays[COUNTS])
            bank.add(classes, features)
            state = bank.to_arrays()
            record.arrays[SUMS], record.arrays[COUNTS] = state["sums"], state["counts"]
            view = await self._commit(record, meta.version)
        added = {meta.labels[i]: int(n) for i, n in zip(*np.unique(classes, return_counts=True))}
        return view, added

    # ---- calibration ---------------------------------------------------------------------------

    async def calibrate(
        self,
        label_set_id: str,
        labels: Sequence[str],
        images: Sequence[Image.Image] | Sequence[bytes],
        request: CalibrationRequest,
        expected_version: int | None = None,
    ) -> LabelSetView:
        """Pick the acceptance threshold on labelled images and store it with the label set.

        With ``tune``, a seeded stratified half of the images tunes α / T_v (best AURC) and the threshold is
        chosen on the other half only, so the guarantee is not spent on data that also chose α.

        The images are encoded outside the label-set lock (their embeddings depend only on the model); the
        threshold is then chosen under the lock on the version it is stored with, so concurrent writers
        never make calibration fail (a client that gave ``expected_version`` still gets 409 when stale).
        """
        if len(labels) != len(images):
            raise unprocessable(
                f"got {len(images)} images but {len(labels)} labels; give one label per image"
            )
        if len(images) > self.max_calibration_images:
            raise unprocessable(f"at most {self.max_calibration_images} calibration images per request")
        self._calibration_plan(self._entry(label_set_id), labels, request, len(images))  # fail fast
        embeddings, features = await self.encode(images)
        async with self._lock(label_set_id):
            entry = self._entry(label_set_id)
            classes, score, threshold_idx, tuning_idx = self._calibration_plan(
                entry, labels, request, len(images)
            )
            view = entry.view
            alpha, temperature = view.alpha, view.visual_temperature
            if tuning_idx.size:
                base = self._score(view, embeddings[tuning_idx], features[tuning_idx], alpha, temperature)
                tuned = tune_trustvlm(
                    base.logits,
                    features[tuning_idx],
                    np.asarray(view.prototypes),
                    np.asarray(view.has_prototype),
                    classes[tuning_idx],
                    score="trustvlm_star" if score == "trustvlm_star" else "trustvlm",
                )
                alpha, temperature = tuned.alpha, tuned.visual_temperature
            scored = self._score(view, embeddings[threshold_idx], features[threshold_idx], alpha, temperature)
            conf = scored.scores[score]
            predicted = scored.refined_predictions if score == "trustvlm_star" else scored.predictions
            correct = (predicted == classes[threshold_idx]).astype(np.int64)
            try:
                if request.rule == "target_risk":
                    result = calibrate_target_risk(conf, correct, request.target_risk, request.delta)
                else:
                    result = calibrate_target_coverage(conf, correct, request.target_coverage)
            except CalibrationError as exc:
                raise unprocessable(str(exc), code="calibration_impossible",
                                    details={"min_samples": exc.min_samples, "n": int(correct.size),
                                             "accuracy": float(correct.mean())}) from exc  # fmt: skip
            live = fit_live_trust(
                scored,
                classes[threshold_idx],
                has_prototype=np.asarray(view.has_prototype),
                score=score,
                confidence=conf,
                correct=correct,
                accepted=result.accepts(conf),
                epsilon=request.epsilon,
                method=request.conformal_method,
            )
            record = self._next(entry, expected_version, alpha=alpha, visual_temperature=temperature)
            record.meta.calibration = CalibrationRecord(
                rule=result.rule,
                score=score,
                threshold=result.threshold,
                target=result.target,
                delta=result.delta,
                guarantee=result.guarantee,
                coverage=result.coverage,
                risk=result.risk,
                risk_upper_bound=result.risk_upper_bound,
                n=result.n,
                n_tuning=int(tuning_idx.size),
                alpha=alpha,
                visual_temperature=temperature,
                label_set_version=record.meta.version,
                conformal=live.conformal,
                monitor=live.monitor,
            )
            record.meta.trust_score = score
            return await self._commit(record, entry.record.meta.version)

    def _calibration_plan(
        self, entry: _Entry, labels: Sequence[str], request: CalibrationRequest, n_images: int
    ) -> tuple[np.ndarray, TrustScoreName, np.ndarray, np.ndarray]:
        """(classes, score, threshold indices, tuning indices) for the label set's current version; 422
        for unknown classes, missing prototypes or too few images."""
        meta, view = entry.record.meta, entry.view
        classes = self._class_indices(meta, labels)
        score = request.score or meta.trust_score
        if score != "msp" and not view.has_prototype.all():
            missing = [meta.labels[i] for i in np.flatnonzero(~view.has_prototype)]
            raise unprocessable(
                f"score {score!r} needs a prototype for every class; add support images for {missing[:10]} "
                "first, or calibrate score 'msp'",
                code="missing_prototypes",
            )
        threshold_idx, tuning_idx = _split(classes, request.tune and score != "msp", request.seed)
        self._check_size(request, len(threshold_idx), n_images)
        return classes, score, threshold_idx, tuning_idx

    def _check_size(self, request: CalibrationRequest, n_threshold: int, n_total: int) -> None:
        if request.rule == "target_risk":
            if request.target_risk is None or not 0 < request.target_risk < 1:
                raise unprocessable("rule target_risk needs target_risk in (0, 1)")
            if not 0 < request.delta < 1:
                raise unprocessable("delta must be in (0, 1)")
            needed = min_calibration_size(request.target_risk, request.delta)
            if n_threshold < needed:
                split_note = (
                    f" (tuning uses half of them, so send at least {2 * needed})"
                    if n_threshold < n_total
                    else ""
                )
                raise unprocessable(
                    f"{n_threshold} calibration images cannot support selective risk ≤ "
                    f"{request.target_risk:g} at δ = {request.delta:g}: even with zero errors the "
                    f"Clopper-Pearson bound needs at least "
                    f"{needed} accepted images{split_note}; expect far more for a useful coverage",
                    code="calibration_set_too_small",
                    details={"min_samples": needed, "n": n_threshold},
                )
        else:
            if request.target_coverage is None or not 0 < request.target_coverage <= 1:
                raise unprocessable("rule target_coverage needs target_coverage in (0, 1]")
            if n_threshold < 1:
                raise unprocessable("no calibration images", code="calibration_set_too_small")

    def _score(
        self,
        view: LabelSetView,
        embeddings: np.ndarray,
        features: np.ndarray,
        alpha: float,
        temperature: float,
    ) -> Any:
        return score_batch(
            embeddings,
            features,
            np.asarray(view.text_embeddings),
            logit_scale=self.engine.logit_scale,
            logit_bias=self.engine.logit_bias,
            prototypes=np.asarray(view.prototypes) if view.has_prototype.any() else None,
            has_prototype=np.asarray(view.has_prototype),
            alpha=alpha,
            visual_temperature=temperature,
        )

    # ---- test-time adaptation (opt-in) ---------------------------------------------------------

    async def observe(
        self,
        label_set_id: str,
        version: int,
        aux_features: np.ndarray,
        predictions: np.ndarray,
        scores: np.ndarray,
    ) -> bool:
        """Offer classified images to the label set's bounded per-class cache (if adaptation is on).

        ``predictions`` are the classes the label set's trust score judged (ŷ*, for TrustVLM*), ``scores``
        that trust score. An image enters when its score ≥ ``min_score`` (and the calibrated rule accepts
        it, when there is one); a full class cache keeps its ``max_per_class`` highest scores. Returns
        True when the prototypes changed (a new version is written).
        """
        entry = self._entries.get(label_set_id)
        if entry is None or not entry.view.adaptation.enabled or entry.view.version != version:
            return False
        config = entry.view.adaptation
        scores = np.asarray(scores, dtype=np.float64)
        keep = np.isfinite(scores) & (scores >= config.min_score)
        if entry.view.calibration is not None:
            keep &= scores >= entry.view.calibration.threshold
        keep &= entry.view.has_prototype[np.asarray(predictions, dtype=np.int64)]
        if not keep.any():
            return False
        async with self._lock(label_set_id):
            entry = self._entries.get(label_set_id)
            if entry is None or entry.view.version != version:
                return False
            record = self._next(entry, None)
            arrays = record.arrays
            f = arrays[SUMS].shape[1]
            cls = np.concatenate([arrays.get(CACHE_CLASS, np.zeros(0, np.int64)), predictions[keep]])
            feats = np.concatenate(
                [
                    arrays.get(CACHE_FEATURES, np.zeros((0, f), np.float32)),
                    aux_features[keep].astype(np.float32),
                ]
            )
            sc = np.concatenate(
                [arrays.get(CACHE_SCORES, np.zeros(0, np.float32)), scores[keep].astype(np.float32)]
            )
            selected = _top_per_class(cls, sc, config.max_per_class)
            if selected.size == arrays.get(CACHE_CLASS, np.zeros(0)).size and np.array_equal(
                selected, np.arange(selected.size)
            ):
                return False  # nothing new made it into any cache
            arrays[CACHE_CLASS], arrays[CACHE_FEATURES], arrays[CACHE_SCORES] = (
                cls[selected].astype(np.int64),
                feats[selected],
                sc[selected],
            )
            await self._commit(record, entry.record.meta.version)
            return True

    def observe_predictions(self, label_set_id: str, aux_features: np.ndarray, scored: ScoredBatch) -> None:
        """Hook for classify: offer a scored batch to the adaptation cache in the background (no-op unless
        the label set opted in). Uses the prediction the label set's trust score judges."""
        entry = self._entries.get(label_set_id)
        if entry is None or not entry.view.adaptation.enabled:
            return
        view = entry.view
        scores = scored.scores.get(view.trust_score)
        predictions = (
            scored.refined_predictions if view.trust_score == "trustvlm_star" else scored.predictions
        )
        if scores is None or predictions is None:
            return
        task = asyncio.get_running_loop().create_task(
            self.observe(label_set_id, view.version, aux_features, np.asarray(predictions), scores)
        )
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[bool]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("test-time adaptation update failed: %s", task.exception())

    async def stop(self) -> None:
        """Wait for pending background cache writes (called at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def readiness_problem(self) -> str | None:
        """For /readyz: None while the store can take writes. Entries that failed to load do not make the
        server unready (they are listed by GET /v1/label-sets)."""
        root = getattr(self.store, "root", None)
        if root is not None and not os.access(root, os.W_OK):
            return f"label-set store {root} is not writable"
        return None

    # ---- replicas sharing a database (app/labelsets/sync.py) ------------------------------------

    def local_versions(self) -> dict[str, int]:
        """Version of every label set this process serves (compared with the store by the watcher)."""
        return {label_set_id: entry.view.version for label_set_id, entry in self._entries.items()}

    async def refresh(self, label_set_id: str) -> None:
        """Another replica changed this label set: re-read it and rebuild only its view and indexes, or
        drop it when it was deleted. Raises (after recording the reason) when it cannot be served."""
        async with self._lock(label_set_id):
            try:
                record = await asyncio.to_thread(self.store.load, label_set_id)
            except LabelSetNotFoundError:
                self._entries.pop(label_set_id, None)
                self._failed.pop(label_set_id, None)
                return
            except CorruptEntryError as exc:
                self._entries.pop(label_set_id, None)
                self._failed[label_set_id] = exc.reason
                raise
            entry = self._entries.get(label_set_id)
            if entry is not None and entry.record.meta == record.meta:
                return  # already serving exactly this version (our own write)
            try:
                self._check_compatible(record.meta)
                self._check_arrays(record)
                view = await asyncio.to_thread(self._build_view, record)
            except (APIError, ValueError) as exc:
                self._entries.pop(label_set_id, None)
                self._failed[label_set_id] = str(getattr(exc, "message", exc))
                raise
            self._entries[label_set_id] = _Entry(record, view)
            self._failed.pop(label_set_id, None)

    # ---- export / import -----------------------------------------------------------------------

    def export_record(self, label_set_id: str) -> StoredLabelSet:
        """The current stored record (for ``archive.write_archive``)."""
        return self._entry(label_set_id).record

    async def import_record(self, record: StoredLabelSet, new_id: str | None = None) -> LabelSetView:
        """Register an exported label set here (as version 1, under ``new_id`` if given); 409 when the id
        exists, 409 when it was built with another model, 422 for anything create + add-images would have
        refused (``_check_importable``). Stored indexes are not trusted: they are rebuilt."""
        label_set_id = new_id or record.meta.id
        if not is_valid_slug(label_set_id):
            raise unprocessable(f"label-set id {shown(label_set_id)} is not a valid slug", code="invalid_id")
        self._check_compatible(record.meta)
        self._check_importable(record)
        record = StoredLabelSet(record.meta, record.arrays, {})  # FAISS blobs are rebuilt, never parsed
        fresh = as_first_version(record, label_set_id)
        fresh.meta.updated_at = utc_now()
        async with self._lock(label_set_id):
            if label_set_id in self._entries:
                raise conflict(f"label set {shown(label_set_id)} already exists", code="label_set_exists")
            return await self._commit(fresh, expected_version=0)


def store_unavailable(exc: Exception) -> APIError:
    """503 for a write the store could not take (database unreachable); nothing was half-written."""
    return APIError(
        503,
        "label_store_unavailable",
        f"the label-set store is unavailable, nothing was changed; retry later ({exc})",
        headers={"Retry-After": "5"},
    )


def _preset_score(name: str) -> TrustScoreName:
    return name if name in ("trustvlm", "trustvlm_star", "msp") else "trustvlm"  # type: ignore[return-value]


def _drop_cache(arrays: dict[str, np.ndarray]) -> None:
    for name in (CACHE_CLASS, CACHE_FEATURES, CACHE_SCORES):
        arrays.pop(name, None)


def _top_per_class(classes: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest-scoring entries of each class (existing entries win ties), sorted."""
    order = np.lexsort((np.arange(classes.size), -scores, classes))
    ranked = classes[order]
    first = np.searchsorted(ranked, ranked, side="left")
    rank_in_class = np.arange(ranked.size) - first
    return np.sort(order[rank_in_class < k])


def _split(classes: np.ndarray, tune: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(threshold indices, tuning indices): a seeded per-class half for tuning when ``tune``."""
    everything = np.arange(classes.size)
    if not tune:
        return everything, np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    tuning = []
    for c in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == c))
        tuning.append(members[: members.size // 2])
    tuning_idx = np.sort(np.concatenate(tuning)) if tuning else np.zeros(0, np.int64)
    return np.setdiff1d(everything, tuning_idx), tuning_idx
