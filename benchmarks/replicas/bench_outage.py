"""What two replicas do while their PostgreSQL is down, measured on a private throw-away cluster.

  python benchmarks/replicas/bench_outage.py --cycles 3

Each cycle: classify by label set on both replicas for --outage-s with the database up (baseline), crash
the database (``pg_ctl stop -m immediate``), measure how long each replica takes to turn /readyz red,
classify on both replicas for the rest of the outage (success rate, latency vs the baseline),
try a write (status and how long it takes to fail), restart the database, then measure how long until
/readyz is green again and until a write succeeds, and whether both replicas serve the same version.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.replicas.bench_replicas import LABELS, png, start  # noqa: E402
from tests.support.postgres import ThrowawayCluster, fresh_schema, postgres_bindir  # noqa: E402


def until(predicate, timeout_s: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"not reached in {timeout_s} s")
        time.sleep(0.01)
    return time.monotonic() - started


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def add_image(url: str, seed: int) -> httpx.Response:
    label = LABELS[seed % 3]
    return httpx.post(
        f"{url}/v1/label-sets/colours/images",
        files=[("images", ("x.png", png(label, seed), "image/png"))],
        data={"labels": [label]},
        timeout=60,
    )


def classify(url: str, seed: int) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/classify",
        files=[("images", ("x.png", png(LABELS[seed % 3], seed), "image/png"))],
        data={"label_set": "colours"},
        timeout=60,
    )


def classify_for(a: str, b: str, seconds: float, seed: int) -> tuple[list[float], int]:
    """Sequential classify requests alternating over both replicas for ``seconds``: (latencies, ok)."""
    latencies, ok = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for url in (a, b):
            t0 = time.monotonic()
            r = classify(url, seed)
            latencies.append(time.monotonic() - t0)
            ok += r.status_code == 200
            seed += 1
    return latencies, ok


def summary(latencies: list[float], ok: int) -> dict[str, float]:
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "ok": ok,
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--outage-s", type=float, default=5.0, help="how long the database stays down")
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    bindir = postgres_bindir()
    if bindir is None:
        parser.error("PostgreSQL server binaries not found")

    cluster = ThrowawayCluster(bindir)
    cluster.start()
    cycles = []
    try:
        with tempfile.TemporaryDirectory() as tmp, fresh_schema(cluster.url, prefix="outage") as url:
            a, b = start(args.model, Path(tmp), url, ["a", "b"])
            try:
                httpx.post(
                    f"{a.url}/v1/label-sets", json={"id": "colours", "labels": LABELS}
                ).raise_for_status()
                add_image(a.url, 0).raise_for_status()
                for cycle in range(args.cycles):
                    seed = 1000 * (cycle + 1)
                    baseline, _ = classify_for(a.url, b.url, args.outage_s, seed)  # database up
                    cluster.crash()
                    down_at = time.monotonic()
                    red = {name: until(lambda s=s: not ready(s.url)) for name, s in (("a", a), ("b", b))}
                    remaining = args.outage_s - (time.monotonic() - down_at)
                    latencies, ok = classify_for(a.url, b.url, remaining, seed + 500)
                    seed += 900
                    t0 = time.monotonic()
                    write = add_image(b.url, seed)
                    write_fail_s = time.monotonic() - t0
                    cluster.start()
                    up_at = time.monotonic()
                    green = {name: until(lambda s=s: ready(s.url)) for name, s in (("a", a), ("b", b))}
                    until(lambda s=seed: add_image(a.url, s + 1).status_code == 200)
                    write_ok_after = time.monotonic() - up_at
                    version_a = httpx.get(f"{a.url}/v1/label-sets/colours").json()["version"]
                    same = until(
                        lambda v=version_a: httpx.get(f"{b.url}/v1/label-sets/colours").json()["version"] == v
                    )
                    cycles.append(
                        {
                            "readyz_red_after_s": {k: round(v, 2) for k, v in red.items()},
                            "classify_before_outage": summary(baseline, len(baseline)),
                            "classify_during_outage": summary(latencies, ok),
                            "write_during_outage": {
                                "status": write.status_code,
                                "code": write.json().get("error", {}).get("code"),
                                "failed_after_s": round(write_fail_s, 2),
                            },
                            "readyz_green_after_restart_s": {k: round(v, 2) for k, v in green.items()},
                            "first_write_ok_after_restart_s": round(write_ok_after, 2),
                            "replicas_agree_after_s": round(same, 3),
                        }
                    )
                    print(json.dumps(cycles[-1]), flush=True)
            finally:
                a.stop()
                b.stop()
    finally:
        cluster.remove()
    print(json.dumps({"model": args.model, "outage_s": args.outage_s, "cycles": cycles}, indent=2))


if __name__ == "__main__":
    main()
