"""kill -9 the real server while label sets are being created, extended and calibrated; restart; every
stored label set is the old or the new version (never a mix) and every checksum holds (see crash.py).

Quick: 1 trial (two server starts). ``TRUSTSERVE_FULL_RELIABILITY=1``: 20 trials on one store, each
verified on disk and through the restarted server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.reliability.conftest import FULL
from tests.reliability.crash import SetHistory, run_trial, verify_served, verify_store
from tests.support.live_server import tiny_server

TRIALS = int(os.environ.get("TRUSTSERVE_CRASH_TRIALS", "20" if FULL else "1"))
ADMIN_KEY = "crash-admin-6d1f0b9a2e"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_sigkill_during_label_set_writes_leaves_old_or_new_versions(
    tiny_models_dir: Path, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    env = {"TRUSTSERVE_API_KEYS": f"{ADMIN_KEY}:admin", "TRUSTSERVE_WARMUP": "false"}
    histories: dict[str, SetHistory] = {}
    reports = []
    uncommitted: list[int] = []
    for trial in range(TRIALS):
        server = tiny_server(tiny_models_dir, store_dir, log_path=tmp_path / "server.log", env=env)
        server.start()
        try:
            server.wait_ready(timeout_s=180)
            if trial:  # the restart after the previous kill
                uncommitted.append(verify_served(server.url, HEADERS, store_dir))
            report, seen = run_trial(server, seed=1000 + trial, headers=HEADERS)
        finally:
            server.kill()
        histories.update(seen)
        report.verified = verify_store(store_dir, histories)
        reports.append(report)
        assert report.writes_acked > 0, f"trial {trial}: no write was acknowledged before the kill"
    server = tiny_server(tiny_models_dir, store_dir, log_path=tmp_path / "server.log", env=env)
    server.start()
    try:
        server.wait_ready(timeout_s=180)
        uncommitted.append(verify_served(server.url, HEADERS, store_dir))
    finally:
        server.stop()
    folder = os.environ.get("TRUSTSERVE_RELIABILITY_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        figures = {
            "trials": len(reports),
            "survived": len(reports),
            "writes_acknowledged": sum(r.writes_acked for r in reports),
            "kills_with_writes_in_flight": sum(r.writes_in_flight_at_kill > 0 for r in reports),
            "label_sets_verified_last": reports[-1].verified,
            "label_sets_total": len(histories),
            "uncommitted_creations_reported": uncommitted[-1],
            "per_trial": [vars(r) for r in reports],
        }
        (Path(folder) / "crash.json").write_text(json.dumps(figures, indent=2))
