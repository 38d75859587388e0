"""Kill the real server (SIGKILL) while clients register support images, restart it, and check the label
set: it loads, keeps every acknowledged registration, and each registration is all-or-nothing."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.labelsets.conftest import colour_image
from tests.support.live_server import tiny_server

LABELS = ["red", "green", "blue"]
PER_REQUEST = 6  # images per registration; every registration bumps the version by one


def _files() -> list:
    out = []
    for i in range(PER_REQUEST):
        buf = io.BytesIO()
        colour_image(LABELS[i % 3], i).save(buf, "PNG")
        out.append(("images", (f"{i}.png", buf.getvalue(), "image/png")))
    return out


def _register_until_dead(url: str, acknowledged: list[int], stop: threading.Event) -> None:
    labels = [LABELS[i % 3] for i in range(PER_REQUEST)]
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            try:
                r = http.post("/v1/label-sets/colours/images", files=_files(), data={"labels": labels})
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acknowledged.append(r.json()["version"])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_server_killed_during_registration_restarts_clean(tiny_models_dir: Path, tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "server.log"
    rng = np.random.default_rng(0)
    server = tiny_server(tiny_models_dir, store, log_path=log).start().wait_ready(120)
    assert (
        httpx.post(f"{server.url}/v1/label-sets", json={"id": "colours", "labels": LABELS}).status_code == 201
    )
    acknowledged: list[int] = [1]
    trials = 8
    for _ in range(trials):
        stop = threading.Event()
        writers = [threading.Thread(target=_register_until_dead, args=(server.url, acknowledged, stop))
                   for _ in range(2)]  # fmt: skip
        for w in writers:
            w.start()
        time.sleep(float(rng.uniform(0.3, 1.5)))
        server.kill()  # SIGKILL, mid-request
        stop.set()
        for w in writers:
            w.join(30)
        server = tiny_server(tiny_models_dir, store, log_path=log, port=server.port).start().wait_ready(120)
        body = httpx.get(f"{server.url}/v1/label-sets/colours").json()
        version = body["version"]
        assert version >= max(acknowledged), "an acknowledged registration was lost"
        total = sum(c["support_images"] for c in body["classes"])
        assert total == PER_REQUEST * (version - 1), "a registration was applied partially"
        assert httpx.get(f"{server.url}/v1/label-sets").json()["unavailable"] == []
    server.stop()
    print(f"server crash test: {trials} kills, {len(acknowledged) - 1} acknowledged registrations, all kept")
