"""Fixtures for the deployment checks: one real trustserve subprocess (tiny random-weight model) with some
real classify traffic behind it, shared by every deploy test that asks for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import image_bytes
from tests.support.live_server import LiveServer, tiny_server

LABELS = ["espresso", "a cat", "a rocket"]
CLASSIFY_REQUESTS = 3


def drive_classify_traffic(url: str, n: int = CLASSIFY_REQUESTS) -> None:
    """``n`` real multipart classify requests (one PNG each) and one refused for a bad body, so request,
    stage, batch, trust-score and error series all have observations."""
    for i in range(n):
        r = httpx.post(
            f"{url}/v1/classify",
            files=[("image", (f"x{i}.png", image_bytes(seed=i), "image/png"))],
            data={"labels": json.dumps(LABELS)},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    bad = httpx.post(
        f"{url}/v1/classify",
        files=[("image", ("bad.png", b"not an image", "image/png"))],
        data={"labels": json.dumps(LABELS)},
        timeout=30,
    )
    assert 400 <= bad.status_code < 500, bad.text


@pytest.fixture(scope="session")
def live_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``python -m tests.support.serve_tiny``: the real app under uvicorn on a free loopback port."""
    root = tmp_path_factory.mktemp("deploy-server")
    server = tiny_server(tiny_models_dir, root / "store", log_path=root / "server.log")
    with server:
        yield server


@pytest.fixture(scope="session")
def served_metrics(live_server: LiveServer) -> str:
    """The /metrics exposition after real classify traffic."""
    drive_classify_traffic(live_server.url)
    r = httpx.get(f"{live_server.url}/metrics", timeout=10)
    assert r.status_code == 200
    return r.text
