"""The test-time adaptation cache as arrays: a bounded per-class cache of confidently classified images
that moves the prototypes, by at most a capped amount (in the spirit of TDA, Karmanov et al., CVPR 2024).
Pure functions over a label set's arrays; ``app.labelsets.adaptation_writer`` writes the cache.

A cache entry changes what the decision score is computed from, so a calibration made before it no
longer applies (``app.labelsets.basis``): answers then say so, until the label set is recalibrated.
"""

from __future__ import annotations

import numpy as np

from app.labelsets.models import CACHE_ARRAYS, CACHE_CLASS
from app.trust.prototypes import PrototypeBank
from app.trust.scores import l2_normalize


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
