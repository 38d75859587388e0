"""FAISS nearest-neighbour index over L2-normalised vectors (class prototypes or text embeddings).

Inner product on normalised vectors is cosine similarity. Small sets use an exact flat index; above a
configurable number of vectors an HNSW graph (Malkov & Yashunin, 2018) trades a little recall for
sub-linear search. Row ids are class indices, so a search answers "which classes are closest".

Building the graph takes minutes (100k classes: 33 min on a loaded 2-core box), so the label-set service
never waits for it: :func:`serving_index` returns an exact flat index at once and builds the HNSW graph in
a background thread (all cores, at a lower CPU priority than requests), then swaps it in; searches in the
meantime are exact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, cast

import faiss
import numpy as np

from app.config import DEFAULT_HNSW_THRESHOLD  # the default of the index_hnsw_threshold setting

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]

DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_CONSTRUCTION = 200
DEFAULT_HNSW_EF_SEARCH = 256
BUILD_CHUNK = 8192  # vectors added to the graph per call (a superseded build stops between chunks)
BUILD_NICENESS = 10  # background builds run below the request threads' CPU priority (Linux)


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
    """A FAISS inner-product index whose ids are class indices (``IndexIDMap2`` over flat or HNSW).

    ``pending`` is the build running in the background for this index (see :func:`serving_index`): until it
    finishes the index searches exactly (flat), then the HNSW graph replaces it in place."""

    def __init__(self, index: faiss.Index, kind: IndexKind) -> None:
        self._index = index
        self.kind: IndexKind = kind
        self.pending: Future[None] | None = None

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
        index = _empty(kind, dim, params)
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
        sims, ids = self._index.search(queries, k)  # one read of ``_index``: a swap cannot split a call
        sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
        return sims, ids.astype(np.int64)

    def set_ef_search(self, ef_search: int) -> None:
        """HNSW search breadth (recall/latency knob); no-op for flat."""
        if self.kind == "hnsw":
            id_map = cast(faiss.IndexIDMap2, self._index)
            hnsw = cast(faiss.IndexHNSWFlat, faiss.downcast_index(id_map.index))
            hnsw.hnsw.efSearch = int(ef_search)

    def wait_built(self, timeout_s: float | None = None) -> None:
        """Block until a background build of this index has finished (tests, benchmarks, shutdown)."""
        if self.pending is not None:
            self.pending.result(timeout_s)

    def _swap(self, index: faiss.Index, kind: IndexKind) -> None:
        self._index, self.kind = index, kind

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


def _empty(kind: IndexKind, dim: int, params: IndexParams) -> faiss.Index:
    base: faiss.Index
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = params.ef_construction
        base.hnsw.efSearch = params.ef_search
    else:
        base = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(base)


# One build at a time (each uses every core). Builds run in daemon threads: shutting the server down
# never waits for a graph that is only a speed-up.
_ONE_BUILD_AT_A_TIME = threading.Lock()


def serving_index(
    vectors: np.ndarray, ids: np.ndarray, params: IndexParams, stored: bytes | None = None
) -> VectorIndex:
    """The index a label-set view serves for ``vectors`` (N, D) with class ids ``ids`` (N,).

    ``stored``: the index saved with the label set; used when it holds N vectors of width D and is of the
    kind ``params`` asks for. Otherwise a new index: flat below ``params.hnsw_threshold``; at or above it an
    exact flat index returned at once while the HNSW graph is built in the background and swapped in when
    done (``VectorIndex.pending``). The write that crossed the threshold does not wait for the graph."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    kind = params.kind_for(n)
    if stored is not None:
        found = VectorIndex.from_bytes(stored)
        if found.ntotal == n and found.dim == dim and found.kind == kind:
            return found
        log.warning("stored %s index (%d vectors) does not match %d %s vectors; rebuilding",
                    found.kind, found.ntotal, n, kind)  # fmt: skip
    index = VectorIndex.build(vectors, ids, params, kind="flat")
    if kind == "hnsw":
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        index.pending = Future()
        threading.Thread(
            target=_build_in_background,
            args=(weakref.ref(index), index.pending, vectors, ids, params),
            name="index-build",
            daemon=True,
        ).start()
    return index


def _build_in_background(
    target: weakref.ref[VectorIndex],
    done: Future[None],
    vectors: np.ndarray,
    ids: np.ndarray,
    params: IndexParams,
) -> None:
    """Add ``vectors`` to a new HNSW graph a chunk at a time with every core, then swap it into the
    target; stops early when the target is gone (its label-set version was replaced). A failed build
    leaves the exact index serving."""
    with contextlib.suppress(OSError, AttributeError):  # below request threads (inherited by OpenMP's)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BUILD_NICENESS)
    threads = len(os.sched_getaffinity(0))
    faiss.omp_set_num_threads(threads)  # this thread's OpenMP setting only
    try:
        with _ONE_BUILD_AT_A_TIME:
            started = time.perf_counter()
            graph = _empty("hnsw", vectors.shape[1], params)
            for start in range(0, len(vectors), BUILD_CHUNK):
                if target() is None:
                    log.info("HNSW build of %d vectors dropped: the index was replaced", len(vectors))
                    break
                graph.add_with_ids(vectors[start : start + BUILD_CHUNK], ids[start : start + BUILD_CHUNK])
            else:
                index = target()
                if index is not None:
                    index._swap(graph, "hnsw")
                    log.info("HNSW index of %d vectors built in %.1f s (%d threads) and swapped in",
                             len(vectors), time.perf_counter() - started, threads)  # fmt: skip
        done.set_result(None)
    except Exception as exc:  # e.g. MemoryError: the exact index keeps serving
        log.exception("HNSW build of %d vectors failed; the exact index keeps serving", len(vectors))
        done.set_exception(exc)
