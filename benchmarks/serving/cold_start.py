"""Cold start (process start -> /readyz 200) and single-image latency (one request at a time, over HTTP),
per runtime; for exported runtimes once with an empty export cache (export + parity check + for ``auto``
the speed measurement) and once with the warm cache.

python benchmarks/serving/cold_start.py --preset offline-conse --requests 30 --runtimes torch auto
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.bench_runtimes import raise_priority  # noqa: E402
from benchmarks.serving.bench_serving import LABELS, photo_jpegs  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402


def start_and_measure(
    preset: str, runtime: str, cache: Path, store: Path, requests: int, autogroup_nice: int | None = None
) -> str:
    images = photo_jpegs()
    env = {
        "TRUSTSERVE_MODEL": preset,
        "TRUSTSERVE_STORE_DIR": str(store),
        "TRUSTSERVE_LOG_LEVEL": "WARNING",
        "TRUSTSERVE_RUNTIME": runtime,
        "TRUSTSERVE_EXPORT_CACHE_DIR": str(cache),
    }
    server = LiveServer(["trustserve", "serve"], env=env, log_path=store.parent / f"{runtime}.log")
    started = time.perf_counter()
    server.start()
    if autogroup_nice is not None:
        raise_priority(server.process.pid, autogroup_nice)  # type: ignore[union-attr]
    server.wait_ready(timeout_s=900)
    ready_s = time.perf_counter() - started
    try:
        latencies = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(requests + 3):
                files = {"image": ("p.jpg", images[i % len(images)], "image/jpeg")}
                t = time.perf_counter()
                r = http.post("/v1/classify", files=files, data={"labels": str(LABELS).replace("'", '"')})
                r.raise_for_status()
                if i >= 3:  # the first few warm the connection and caches
                    latencies.append((time.perf_counter() - t) * 1000)
            towers = http.get("/v1/models").json()["models"][0].get("runtime", {})
    finally:
        server.stop()
    latencies.sort()
    chosen = ",".join(f"{t}={v['runtime']}/{v['precision']}" for t, v in towers.items())
    return (
        f"ready_after_s={ready_s:.2f} single_image_ms p50={statistics.median(latencies):.1f} "
        f"p90={latencies[int(0.9 * len(latencies)) - 1]:.1f} (n={len(latencies)}) towers: {chosen}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="offline-conse")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "auto"])
    parser.add_argument(
        "--autogroup-nice", type=int, default=None, help="as bench_runtimes: e.g. -19 for the servers"
    )
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes:
            cache = Path(tmp) / f"export-{runtime}"
            passes = ["warm"] if runtime == "torch" else ["empty", "warm"]
            for label in passes:
                store = Path(tmp) / f"store-{runtime}-{label}"
                store.mkdir()
                line = start_and_measure(
                    args.preset, runtime, cache, store, args.requests, args.autogroup_nice
                )
                cache_note = "no export" if runtime == "torch" else f"{label} export cache"
                print(f"preset={args.preset} runtime={runtime} ({cache_note}): {line}", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
