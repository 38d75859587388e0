"""Background HNSW build (issue 13): what a label-set write pays when it crosses ``hnsw_threshold`` vectors,
how searches are served while the graph builds, and how long the build takes with every core.

``serving_index`` (what the label-set service calls) is timed on N random unit vectors: it returns an exact
flat index at once and builds the HNSW graph in a background thread (all cores, niceness 10), swapping it
in when done. While the build runs, single queries are sent every 50 ms to the index being built (they are
answered by the flat index until the swap); afterwards the graph's recall@1/@10 against the exact answers.

    python -m benchmarks.faiss.bench_build --vectors 100000 --dim 512 --json /tmp/build.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import faiss
import numpy as np

from app.labelsets.index import IndexParams, VectorIndex, normalise_rows, serving_index
from benchmarks.faiss.bench_faiss import queries_near, recall_at


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    vectors = normalise_rows(rng.standard_normal((args.vectors, args.dim)))
    ids = np.arange(args.vectors, dtype=np.int64)
    queries = queries_near(vectors, args.queries, 0.5, rng)
    params = IndexParams(hnsw_threshold=min(args.vectors, IndexParams.hnsw_threshold))
    load_before = os.getloadavg()

    started = time.perf_counter()
    index = serving_index(vectors, ids, params)
    returned_s = time.perf_counter() - started
    assert index.pending is not None, "below the HNSW threshold: nothing is built in the background"
    during: list[float] = []
    kinds: set[str] = set()
    i = 0
    while not index.pending.done():
        t = time.perf_counter()
        index.search(queries[i % len(queries)][None], args.k)
        during.append((time.perf_counter() - t) * 1000)
        kinds.add(index.kind)
        i += 1
        time.sleep(0.05)
    index.wait_built()
    built_s = time.perf_counter() - started
    assert index.kind == "hnsw"
    _, approx = index.search(queries, args.k)
    exact = VectorIndex.build(vectors, ids, kind="flat")
    _, truth = exact.search(queries, args.k)
    result = {
        "vectors": args.vectors,
        "dim": args.dim,
        "hnsw_m": params.hnsw_m,
        "ef_construction": params.ef_construction,
        "ef_search": params.ef_search,
        "threads": len(os.sched_getaffinity(0)),
        "write_waits_s": round(returned_s, 3),
        "background_build_s": round(built_s, 1),
        "queries_during_build": len(during),
        "query_during_build_p50_ms": round(statistics.median(during), 2) if during else None,
        "query_during_build_max_ms": round(max(during), 2) if during else None,
        "served_by_during_build": sorted(kinds),
        "recall_at_1": round(recall_at(approx, truth, 1), 4),
        f"recall_at_{args.k}": round(recall_at(approx, truth, args.k), 4),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "faiss": faiss.__version__,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
