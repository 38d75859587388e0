"""Cold start (process start -> /readyz 200) and single-image latency (one request at a time, over HTTP).

python benchmarks/serving/cold_start.py --preset offline-conse --requests 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.bench_serving import LABELS, photo_jpegs  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="offline-conse")
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    images = photo_jpegs()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "TRUSTSERVE_MODEL": args.preset,
            "TRUSTSERVE_STORE_DIR": f"{tmp}/store",
            "TRUSTSERVE_LOG_LEVEL": "WARNING",
        }
        server = LiveServer(["trustserve", "serve"], env=env, log_path=Path(tmp) / "log")
        started = time.perf_counter()
        server.start().wait_ready(timeout_s=600)
        ready_s = time.perf_counter() - started
        try:
            latencies = []
            with httpx.Client(base_url=server.url, timeout=60) as http:
                for i in range(args.requests + 3):
                    files = {"image": ("p.jpg", images[i % len(images)], "image/jpeg")}
                    t = time.perf_counter()
                    r = http.post("/v1/classify", files=files, data={"labels": str(LABELS).replace("'", '"')})
                    r.raise_for_status()
                    if i >= 3:  # the first few warm the connection and caches
                        latencies.append((time.perf_counter() - t) * 1000)
        finally:
            server.stop()
    latencies.sort()
    print(
        f"preset={args.preset} ready_after_s={ready_s:.2f} single_image_ms: "
        f"p50={statistics.median(latencies):.1f} p90={latencies[int(0.9 * len(latencies)) - 1]:.1f} "
        f"min={latencies[0]:.1f} (n={len(latencies)}, 8 labels, scikit-image JPEG photos)"
    )


if __name__ == "__main__":
    main()
