"""Image-space class prototypes for TrustVLM, and seeded K-shot support draws.

TrustVLM (Dong et al., 2025, arXiv 2505.23745): P_c = normalize(mean_i g(x_{c,i})) — the raw support
features are averaged, then L2-normalised once. The bank keeps per-class running sums and counts, so
support images can be added at any time without keeping the old ones.
"""

from __future__ import annotations

import numpy as np

from app.trust.scores import l2_normalize


class PrototypeBank:
    """Per-class running sums (float64) and counts of raw image features."""

    def __init__(self, num_classes: int, dim: int) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"need num_classes ≥ 1 and dim ≥ 1, got {num_classes}, {dim}")
        self._sums = np.zeros((num_classes, dim), dtype=np.float64)
        self._counts = np.zeros(num_classes, dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return self._sums.shape[0]

    @property
    def dim(self) -> int:
        return self._sums.shape[1]

    @property
    def counts(self) -> np.ndarray:
        """(C,) support images seen per class (a copy)."""
        return self._counts.copy()

    @property
    def has_prototype(self) -> np.ndarray:
        """(C,) bool: the class has at least one support image."""
        return self._counts > 0

    def add(self, class_idx: int | np.ndarray, features: np.ndarray) -> None:
        """Add raw features (F,) or (B, F) for one class index, or for a (B,) array of class indices."""
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim == 1:
            feats = feats[None, :]
        idx = np.broadcast_to(np.asarray(class_idx, dtype=np.int64), (feats.shape[0],))
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"features must have shape (B, {self.dim}), got {np.shape(features)}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_classes):
            raise ValueError(f"class index out of range [0, {self.num_classes})")
        if not np.isfinite(feats).all():
            raise ValueError("features contain NaN or infinity")
        np.add.at(self._sums, idx, feats)
        np.add.at(self._counts, idx, 1)

    def prototypes(self) -> np.ndarray:
        """(C, F) float32: L2-normalised mean feature per class; zero rows where there is no support."""
        means = self._sums / np.maximum(self._counts, 1)[:, None]
        return l2_normalize(means).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """State for storage (``np.savez``; load back with ``allow_pickle=False``)."""
        return {"sums": self._sums.copy(), "counts": self._counts.copy()}

    @classmethod
    def from_arrays(cls, sums: np.ndarray, counts: np.ndarray) -> PrototypeBank:
        """Rebuild a bank from ``to_arrays`` output."""
        sums = np.asarray(sums, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.int64)
        if sums.ndim != 2 or counts.shape != (sums.shape[0],) or (counts < 0).any():
            raise ValueError(f"inconsistent prototype state: sums {sums.shape}, counts {counts.shape}")
        bank = cls(*sums.shape)
        bank._sums[:] = sums
        bank._counts[:] = counts
        return bank

    @classmethod
    def from_features(cls, features: np.ndarray, labels: np.ndarray, num_classes: int) -> PrototypeBank:
        """A bank built from (N, F) raw features and their (N,) class labels."""
        feats = np.asarray(features)
        bank = cls(num_classes, feats.shape[1])
        bank.add(np.asarray(labels), feats)
        return bank


def draw_support_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded K-shot draw: up to ``k`` indices per class (all of a class's samples when it has fewer),
    drawn without replacement, returned sorted. The same (labels, k, seed) always gives the same draw."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(members, size=min(k, members.size), replace=False)
        for cls in np.unique(labels)
        if (members := np.flatnonzero(labels == cls)).size
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
