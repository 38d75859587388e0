"""Opt-in test-time adaptation: classified images whose trust score is high enough enter a bounded
per-class cache that moves the prototypes, by at most a capped amount (in the spirit of TDA, Karmanov et
al., CVPR 2024).

A cache entry changes what the decision score is computed from, so a calibration made before it no
longer applies (``app.labelsets.basis``): answers then say so, until the label set is recalibrated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from app.engine.scoring import ScoredBatch
from app.labelsets.models import CACHE_ARRAYS, CACHE_CLASS, CACHE_FEATURES, CACHE_SCORES, SUMS
from app.trust.prototypes import PrototypeBank
from app.trust.scores import judges_refined_prediction, l2_normalize

if TYPE_CHECKING:
    from app.labelsets.repository import LabelSetRepository

log = logging.getLogger(__name__)


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


def has_cache(arrays: dict[str, np.ndarray]) -> bool:
    """True when the stored arrays hold at least one cache entry (the prototypes are adapted)."""
    return CACHE_CLASS in arrays and bool(arrays[CACHE_CLASS].size)


def drop_cache(arrays: dict[str, np.ndarray]) -> None:
    """Remove the cache (the prototypes return to the support means)."""
    for name in CACHE_ARRAYS:
        arrays.pop(name, None)


def top_per_class(classes: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest-scoring entries of each class (existing entries win ties), sorted."""
    order = np.lexsort((np.arange(classes.size), -scores, classes))
    ranked = classes[order]
    first = np.searchsorted(ranked, ranked, side="left")
    rank_in_class = np.arange(ranked.size) - first
    return np.sort(order[rank_in_class < k])


class TestTimeAdaptation:
    """Offers classified images to the label sets that opted in; cache writes run in the background."""

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(self, repository: LabelSetRepository) -> None:
        self.repository = repository
        self._background: set[asyncio.Task[bool]] = set()

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
        repo = self.repository
        entry = repo.entries.get(label_set_id)
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
        async with repo.lock(label_set_id):
            entry = repo.entries.get(label_set_id)
            if entry is None or entry.view.version != version:
                return False
            record = repo.next_version(entry, None)
            arrays = record.arrays
            f = arrays[SUMS].shape[1]
            old = arrays.get(CACHE_CLASS, np.zeros(0, np.int64))
            cls = np.concatenate([old, predictions[keep]])
            feats = np.concatenate(
                [
                    arrays.get(CACHE_FEATURES, np.zeros((0, f), np.float32)),
                    aux_features[keep].astype(np.float32),
                ]
            )
            sc = np.concatenate(
                [arrays.get(CACHE_SCORES, np.zeros(0, np.float32)), scores[keep].astype(np.float32)]
            )
            selected = top_per_class(cls, sc, config.max_per_class)
            if selected.size == old.size and np.array_equal(selected, np.arange(selected.size)):
                return False  # nothing new made it into any cache
            arrays[CACHE_CLASS], arrays[CACHE_FEATURES], arrays[CACHE_SCORES] = (
                cls[selected].astype(np.int64),
                feats[selected],
                sc[selected],
            )
            await repo.commit(record, entry.record.meta.version)
            return True

    def observe_predictions(self, label_set_id: str, aux_features: np.ndarray, scored: ScoredBatch) -> None:
        """Hook for classify: offer a scored batch to the adaptation cache in the background (no-op unless
        the label set opted in). Uses the prediction the label set's trust score judges."""
        entry = self.repository.entries.get(label_set_id)
        if entry is None or not entry.view.adaptation.enabled:
            return
        view = entry.view
        scores = scored.scores.get(view.trust_score)
        predictions = (
            scored.refined_predictions if judges_refined_prediction(view.trust_score) else scored.predictions
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
