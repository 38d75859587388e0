"""Load and soak on loopback against a real server process (tiny model, queue of 32 images):
at capacity nothing but 200s; above capacity only deliberate 429s (with Retry-After) besides 200s;
accepted requests keep a bounded latency; the server's resident memory stays within a stated bound.

Quick by default (hundreds of requests, seconds); ``TRUSTSERVE_FULL_RELIABILITY=1`` soaks with ≥ 10,000
requests. Figures go to ``$TRUSTSERVE_RELIABILITY_REPORT/load.json`` when that folder is set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from tests.reliability.conftest import FULL, LIVE_ADMIN_KEY, LIVE_READ_KEY, rss_bytes
from tests.reliability.load import run_load

SOAK_REQUESTS = 12_000 if FULL else 400
RSS_GROWTH_BOUND_MB = 64 if FULL else 48  # after a 200-request warm-up
P99_BOUND_S = 5.0  # accepted requests, at capacity
MAX_ACCEPTED_S = 30.0  # any accepted request, above capacity (the server's request timeout)


def _report(name: str, figures: dict[str, object]) -> None:
    folder = os.environ.get("TRUSTSERVE_RELIABILITY_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / "load.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = figures
        path.write_text(json.dumps(data, indent=2))


def _server_problems(server) -> list[str]:  # type: ignore[no-untyped-def]
    """The server log's warnings and errors (to explain a dropped connection)."""
    lines = Path(server.log_path).read_text(errors="replace").splitlines()
    return [line[:300] for line in lines if '"WARNING"' in line or '"ERROR"' in line][-10:]


def test_sustained_load_at_capacity_has_no_errors_and_flat_memory(live_server) -> None:  # type: ignore[no-untyped-def]
    pid = live_server.process.pid
    warm = run_load(live_server.url, requests=200, concurrency=4, api_key=LIVE_READ_KEY, max_seconds=60)
    assert warm.unexpected == {} and not warm.transport_errors, warm.summary()
    baseline = rss_bytes(pid)
    soak = run_load(
        live_server.url,
        requests=SOAK_REQUESTS,
        concurrency=8,
        api_key=LIVE_READ_KEY,
        pid=pid,
        max_seconds=1200 if FULL else 60,
    )
    figures = {**soak.summary(), "baseline_rss_mb": round(baseline / 2**20, 1)}
    growth_mb = (max(soak.rss_samples) - baseline) / 2**20
    figures["rss_growth_mb"] = round(growth_mb, 1)
    _report("at_capacity", figures)
    assert not soak.transport_errors, (soak.transport_errors[:3], _server_problems(live_server))
    assert soak.unexpected == {} and soak.statuses.get(429, 0) == 0, figures
    assert soak.requests >= min(SOAK_REQUESTS, 100), figures  # the time bound did not cut it short
    assert soak.percentile_ms(99) < P99_BOUND_S * 1000, figures
    assert growth_mb < RSS_GROWTH_BOUND_MB, figures


def test_above_capacity_only_deliberate_429s(live_server) -> None:  # type: ignore[no-untyped-def]
    """64 clients x 8 images against a 32-image queue: the excess is refused at once with 429."""
    over = run_load(
        live_server.url,
        requests=3000 if FULL else 300,
        concurrency=64,
        images_per_request=8,
        api_key=LIVE_READ_KEY,
        pid=live_server.process.pid,
        max_seconds=600 if FULL else 60,
    )
    figures = over.summary()
    _report("above_capacity", figures)
    assert not over.transport_errors, (over.transport_errors[:3], _server_problems(live_server))
    assert over.unexpected == {}, figures
    assert over.statuses[429] > 0, f"never overloaded: {figures}"
    assert over.statuses[200] > 0, f"nothing accepted: {figures}"
    assert max(over.accepted_latency_s) < MAX_ACCEPTED_S, figures
    r = httpx.post(
        f"{live_server.url}/v1/classify",
        json={"images": [], "labels": ["a", "b"]},
        headers={"X-API-Key": LIVE_READ_KEY},
    )
    assert r.status_code == 422  # and it is still answering


def test_live_server_log_holds_no_api_key(live_server) -> None:  # type: ignore[no-untyped-def]
    for key in (LIVE_READ_KEY, LIVE_ADMIN_KEY, "wrong-key-5e5e5e5e5e"):
        httpx.get(f"{live_server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        httpx.post(f"{live_server.url}/v1/label-sets", content=b"{", headers={"X-API-Key": key})
    log = Path(live_server.log_path).read_text()
    assert '"request_id"' in log  # the log is real and has traffic
    for key in (LIVE_READ_KEY, LIVE_ADMIN_KEY, "wrong-key-5e5e5e5e5e"):
        assert key not in log
