"""Opt-in test-time adaptation: classified images whose trust score is high enough enter their label set's
bounded per-class cache (``app.labelsets.adaptation``), written as a new version in the background.

It writes through the repository; the repository and the views only read the cache arrays, so data flows
one way: classify → this writer → repository → views → ``adaptation`` (the pure cache arrays).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from app.engine.scoring import ScoredBatch
from app.labelsets.adaptation import top_per_class
from app.labelsets.models import CACHE_CLASS, CACHE_FEATURES, CACHE_SCORES, SUMS
from app.labelsets.repository import LabelSetRepository
from app.trust.scores import judges_refined_prediction

log = logging.getLogger(__name__)


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
