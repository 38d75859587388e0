"""FAISS index benchmark for label sets of 1k / 10k / 100k classes: build time, query latency, memory and
recall of the approximate (HNSW) index against the exact flat one — the same ``VectorIndex`` the label-set
service uses for prototypes and, for very large label sets, text embeddings.

Synthetic data (no model needed): class vectors are random unit vectors in D dims; a query is a class
vector plus Gaussian noise scaled so its cosine to that class is about ``--query-cosine`` (CLIP-like image
to text cosines are ~0.3; image to prototype ~0.6-0.8). Random unit vectors are the hard case for a
graph index: the 10 nearest neighbours of a query are nearly tied. Single-threaded FAISS by default.

    python -m benchmarks.faiss.bench_faiss --sizes 1000 10000 100000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import os
import time

import faiss
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from app.labelsets.index import IndexParams, VectorIndex, normalise_rows


def queries_near(vectors: np.ndarray, n: int, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """Unit queries whose cosine to a random class vector is ≈ ``cosine``."""
    dim = vectors.shape[1]
    targets = vectors[rng.integers(0, vectors.shape[0], n)]
    noise = normalise_rows(rng.standard_normal((n, dim)))
    return normalise_rows(cosine * targets + np.sqrt(1 - cosine**2) * noise)


def latency_ms(index: VectorIndex, queries: np.ndarray, batch: int, k: int, repeats: int) -> float:
    """Median wall time of one search call on ``batch`` queries, in milliseconds."""
    times = []
    for r in range(repeats):
        start = (r * batch) % max(1, queries.shape[0] - batch)
        q = queries[start : start + batch]
        t0 = time.perf_counter()
        index.search(q, k)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean |approx top-k ∩ exact top-k| / k."""
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def bench_size(n: int, dim: int, params: IndexParams, args: argparse.Namespace) -> list[dict[str, object]]:
    rng = np.random.default_rng(args.seed)
    vectors = normalise_rows(rng.standard_normal((n, dim)))
    queries = queries_near(vectors, args.queries, args.query_cosine, rng)
    rows = []
    exact_ids = None
    for kind in ("flat", "hnsw"):
        t0 = time.perf_counter()
        index = VectorIndex.build(vectors, params=params, kind=kind)
        build_s = time.perf_counter() - t0
        efs = [None] if kind == "flat" else args.ef_search
        for ef in efs:
            if ef is not None:
                index.set_ef_search(ef)
            _, ids = index.search(queries, args.k)
            if kind == "flat":
                exact_ids = ids
            assert exact_ids is not None
            rows.append(
                {
                    "classes": n,
                    "dim": dim,
                    "index": kind
                    if ef is None
                    else f"hnsw M={params.hnsw_m} efC={params.ef_construction} efS={ef}",
                    "build_s": round(build_s, 3),
                    "memory_mb": round(index.memory_bytes() / 2**20, 1),
                    "latency_b1_ms": round(latency_ms(index, queries, 1, args.k, args.repeats), 3),
                    "latency_b32_ms": round(
                        latency_ms(index, queries, 32, args.k, max(5, args.repeats // 10)), 3
                    ),
                    "recall_at_1": round(recall_at(ids, exact_ids, 1), 4),
                    f"recall_at_{args.k}": round(recall_at(ids, exact_ids, args.k), 4),
                }
            )
    # the dense alternative: all C cosines by one matrix product (what classify does without top-k)
    t = []
    for r in range(max(5, args.repeats // 4)):
        q = queries[r : r + 32]
        t0 = time.perf_counter()
        np.argpartition(-(q @ vectors.T), args.k, axis=1)
        t.append((time.perf_counter() - t0) * 1000)
    rows.append(
        {
            "classes": n,
            "dim": dim,
            "index": "numpy dense matmul + argpartition",
            "build_s": 0.0,
            "memory_mb": round(vectors.nbytes / 2**20, 1),
            "latency_b1_ms": None,
            "latency_b32_ms": round(float(np.median(t)), 3),
            "recall_at_1": 1.0,
            f"recall_at_{args.k}": 1.0,
        }
    )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    headers = list(rows[0].keys())
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("–" if r[h] is None else str(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--query-cosine", type=float, default=0.5)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--hnsw-m", type=int, default=IndexParams.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=IndexParams.ef_construction)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    params = IndexParams(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    rows: list[dict[str, object]] = []
    with threadpool_limits(args.threads):  # numpy BLAS too: comparable, and no oversubscription
        for n in tqdm(args.sizes, desc="label-set sizes"):
            rows += bench_size(n, args.dim, params, args)
            print(markdown(rows), flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at the end: {load} on {os.cpu_count()} CPUs (other jobs inflate latencies)")
    print(f"faiss {faiss.__version__}, {args.threads} thread(s), dim {args.dim}, {args.queries} queries "
          f"at cosine ≈ {args.query_cosine} to their class, k = {args.k}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
