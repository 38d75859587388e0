"""FAISS nearest-neighbour index over L2-normalised vectors (class prototypes or text embeddings).

Inner product on normalised vectors is cosine similarity. Small sets use an exact flat index; above a
configurable number of vectors an HNSW graph (Malkov & Yashunin, 2018) trades a little recall for
sub-linear search. Row ids are class indices, so a search answers "which classes are closest".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import faiss
import numpy as np

from app.config import DEFAULT_HNSW_THRESHOLD  # the default of the index_hnsw_threshold setting

IndexKind = Literal["flat", "hnsw"]

DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_CONSTRUCTION = 200
DEFAULT_HNSW_EF_SEARCH = 256


@dataclass(frozen=True)
class IndexParams:
    """When to switch to HNSW and how to build it."""

    hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD
    hnsw_m: int = DEFAULT_HNSW_M
    ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION
    ef_search: int = DEFAULT_HNSW_EF_SEARCH

    def kind_for(self, n_vectors: int) -> IndexKind:
        """Flat below the threshold, HNSW at or above it."""
        return "hnsw" if n_vectors >= self.hnsw_threshold else "flat"


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero), float32 C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


class VectorIndex:
    """A FAISS inner-product index whose ids are class indices (``IndexIDMap2`` over flat or HNSW)."""

    def __init__(self, index: faiss.Index, kind: IndexKind) -> None:
        self._index = index
        self.kind: IndexKind = kind

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray | None = None,
        params: IndexParams | None = None,
        kind: IndexKind | None = None,
    ) -> VectorIndex:
        """Index ``vectors`` (N,D), already normalised; ``ids`` (N,) default 0..N-1."""
        params = params or IndexParams()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (N, D), got shape {vectors.shape}")
        n, dim = vectors.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
        kind = kind or params.kind_for(n)
        base: faiss.Index
        if kind == "hnsw":
            base = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = params.ef_construction
            base.hnsw.efSearch = params.ef_search
        else:
            base = faiss.IndexFlatIP(dim)
        index = faiss.IndexIDMap2(base)
        if n:
            index.add_with_ids(vectors, ids)
        return cls(index, kind)

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: (sims (B,k) float32, ids (B,k) int64); missing slots are id -1
        with similarity -inf (fewer than k vectors indexed)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got shape {queries.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        if self.ntotal == 0:
            b = queries.shape[0]
            return np.full((b, k), -np.inf, np.float32), np.full((b, k), -1, np.int64)
        sims, ids = self._index.search(queries, k)
        sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
        return sims, ids.astype(np.int64)

    def set_ef_search(self, ef_search: int) -> None:
        """HNSW search breadth (recall/latency knob); no-op for flat."""
        if self.kind == "hnsw":
            id_map = cast(faiss.IndexIDMap2, self._index)
            hnsw = cast(faiss.IndexHNSWFlat, faiss.downcast_index(id_map.index))
            hnsw.hnsw.efSearch = int(ef_search)

    def to_bytes(self) -> bytes:
        """FAISS's own binary serialisation (no pickle)."""
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        """Inverse of ``to_bytes`` (the index kind is read back from the FAISS structure)."""
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        kind: IndexKind = "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"
        return cls(index, kind)

    def memory_bytes(self) -> int:
        """Size of the serialised index — a close proxy for its resident memory."""
        return int(faiss.serialize_index(self._index).nbytes)
