"""Replicas sharing label sets through PostgreSQL: staleness and classify throughput, on this machine.

  source .ci/postgres.sh && start_postgres
  python benchmarks/replicas/bench_replicas.py --database-url "$TRUSTSERVE_TEST_DATABASE_URL"

1. Staleness: a write on replica A (PATCH of the description, or adding support images, which also
   rebuilds prototypes and the FAISS index), then poll replica B until it serves the new version. Reported
   from A's acknowledgement (commit already happened) to B serving it, p50/p99 over --changes writes.
   Once with LISTEN/NOTIFY (the normal path), once with the notification trigger disabled (only the
   periodic version check, every 5 s: the fallback bound; writes at random moments of that cycle).
2. Classify throughput by label set (one image per request, --clients closed-loop clients) against one
   replica, then against two replicas (clients alternate between them, as a round-robin balancer
   would). Every server and the load generator share this machine's cores.

Everything runs in a fresh schema that is dropped afterwards. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.labelsets.conftest import colour_image  # noqa: E402
from tests.support.live_server import LiveServer, tiny_server  # noqa: E402
from tests.support.postgres import fresh_schema  # noqa: E402
from tests.support.tiny_model import write_tiny_models_dir  # noqa: E402

LABELS = ["red", "green", "blue"]


def png(name: str, seed: int) -> bytes:
    buf = io.BytesIO()
    colour_image(name, seed).save(buf, "PNG")
    return buf.getvalue()


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "max_ms": round(float(arr.max()), 1),
    }


def start(models: str, root: Path, url: str, names: list[str]) -> list[LiveServer]:
    env = {"TRUSTSERVE_DATABASE_URL": url, "TRUSTSERVE_LOG_LEVEL": "WARNING", "TRUSTSERVE_MAX_WAIT_MS": "5"}
    if models == "tiny":
        models_dir = write_tiny_models_dir(root / "models")
        servers = [
            tiny_server(models_dir, root / f"store-{n}", log_path=root / f"{n}.log", env=env) for n in names
        ]
    else:
        env["TRUSTSERVE_MODEL"] = models
        servers = [
            LiveServer([sys.executable, "-m", "app.cli", "serve"],  # this checkout's code
                       env={**env, "TRUSTSERVE_STORE_DIR": str(root / n)},
                       log_path=root / f"{n}.log")
            for n in names
        ]  # fmt: skip
    for s in servers:
        s.start()
    for s in servers:
        s.wait_ready(600)
    return servers


def version(http: httpx.Client, url: str) -> int:
    """Version replica ``url`` serves (0 while it does not know the label set yet)."""
    r = http.get(f"{url}/v1/label-sets/colours")
    if r.status_code == 404:
        return 0
    r.raise_for_status()
    return int(r.json()["version"])


def measure_staleness(
    a: str, b: str, changes: int, kind: str, timeout_s: float, jitter_s: float = 0.0
) -> list[float]:
    """Seconds from A acknowledging a write to B serving its version, for ``changes`` writes. A random
    pause of up to ``jitter_s`` before each write keeps writes from lining up with B's periodic check."""
    lags = []
    rng = np.random.default_rng(0)
    with httpx.Client(timeout=60) as http:
        for i in range(changes):
            time.sleep(float(rng.uniform(0, jitter_s)))
            if kind == "patch":
                r = http.patch(f"{a}/v1/label-sets/colours", json={"description": f"change {i}"})
            else:
                label = LABELS[i % 3]
                r = http.post(
                    f"{a}/v1/label-sets/colours/images",
                    files=[("images", ("x.png", png(label, i), "image/png"))],
                    data={"labels": [label]},
                )
            acked = time.monotonic()
            r.raise_for_status()
            target = r.json()["version"]
            while version(http, b) < target:
                if time.monotonic() - acked > timeout_s:
                    raise TimeoutError(f"replica B did not reach version {target} in {timeout_s} s")
                time.sleep(0.002)
            lags.append(time.monotonic() - acked)
    return lags


async def throughput(urls: list[str], clients: int, seconds: float) -> dict[str, float]:
    """Closed loop: each client sends one-image classify requests, alternating over ``urls``."""
    images = [png(LABELS[i % 3], 500 + i) for i in range(16)]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client(k: int) -> None:
        nonlocal errors
        i = k
        async with httpx.AsyncClient(timeout=60) as http:
            while time.monotonic() < deadline:
                url = urls[i % len(urls)]
                t0 = time.monotonic()
                r = await http.post(
                    f"{url}/v1/classify",
                    files=[("images", ("x.png", images[i % len(images)], "image/png"))],
                    data={"label_set": "colours"},
                )
                if r.status_code == 200:
                    latencies.append(time.monotonic() - t0)
                else:
                    errors += 1
                i += 1

    started = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "replicas": len(urls),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "errors": errors,
        **percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("TRUSTSERVE_TEST_DATABASE_URL"))
    parser.add_argument("--model", default="tiny", help="'tiny' (random-weight test model) or a preset")
    parser.add_argument("--changes", type=int, default=100, help="writes for the NOTIFY staleness figure")
    parser.add_argument("--fallback-changes", type=int, default=10, help="writes with notifications off")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="per throughput run")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("give --database-url (or export TRUSTSERVE_TEST_DATABASE_URL)")

    results: dict[str, object] = {"model": args.model, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp, fresh_schema(args.database_url, prefix="bench") as url:
        root = Path(tmp)
        a, b = start(args.model, root, url, ["a", "b"])
        try:
            httpx.post(f"{a.url}/v1/label-sets", json={"id": "colours", "labels": LABELS}).raise_for_status()
            files = [("images", (f"{i}.png", png(LABELS[i % 3], i), "image/png")) for i in range(6)]
            httpx.post(
                f"{a.url}/v1/label-sets/colours/images",
                files=files,
                data={"labels": [LABELS[i % 3] for i in range(6)]},
                timeout=60,
            ).raise_for_status()
            staleness = {}
            for kind in ("patch", "images"):
                lags = measure_staleness(a.url, b.url, args.changes, kind, timeout_s=30)
                staleness[f"notify/{kind}"] = percentiles(lags)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER TABLE label_sets DISABLE TRIGGER label_sets_changed")
            lags = measure_staleness(a.url, b.url, args.fallback_changes, "patch", 30, jitter_s=5.0)
            staleness["version-check-only/patch"] = percentiles(lags)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER TABLE label_sets ENABLE TRIGGER label_sets_changed")
            results["staleness"] = staleness
            print(json.dumps({"staleness": staleness}), flush=True)

            runs = []
            for urls in ([a.url], [a.url, b.url]):  # B idles (no requests) during the 1-replica run
                runs.append(asyncio.run(throughput(urls, args.clients, args.seconds)))
                print(json.dumps(runs[-1]), flush=True)
            results["throughput"] = runs
        finally:
            for s in (a, b):
                s.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
