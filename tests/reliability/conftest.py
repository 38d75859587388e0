"""Fixtures of the reliability suite: one in-process app per module (tiny random-weight model) and the
process's resident memory, read from /proc (no psutil needed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import wait_ready
from tests.support.tiny_model import TINY_PRESET

FULL = os.environ.get("TRUSTSERVE_FULL_RELIABILITY") == "1"  # the long versions (benchmarks/reliability)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def make_settings(models_dir: Path, store_dir: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from app.config import Settings

    base: dict[str, object] = {
        "model": TINY_PRESET,
        "models_dir": models_dir,
        "store_dir": store_dir,
        "device": "cpu",
        "max_wait_ms": 2.0,
        "log_json": False,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="session")
def multimodal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of tiny multimodal checkpoints (``rel-vectors``, ``rel-media``)."""
    from tests.reliability.multimodal_models import write_multimodal_dir

    return write_multimodal_dir(tmp_path_factory.mktemp("multimodal"))


@pytest.fixture(scope="module")
def module_client(
    tiny_models_dir: Path, multimodal_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """The real create_app around the tiny model, shared by one test module (started and ready)."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    torch.manual_seed(0)
    store = tmp_path_factory.mktemp("reliability-store")
    with TestClient(
        create_app(make_settings(tiny_models_dir, store, multimodal_dir=multimodal_dir)),
        raise_server_exceptions=False,
    ) as c:
        wait_ready(c)
        yield c


LIVE_READ_KEY = "live-read-3c9e71a05f"
LIVE_ADMIN_KEY = "live-admin-b84d26e1c7"


@pytest.fixture(scope="session")
def live_server(tiny_models_dir: Path, multimodal_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One real server process (uvicorn, tiny model, read + admin keys, JSON logs to a file) shared by
    the fuzzing, load and log-exposure tests. Small queue so that overload is reachable on loopback."""
    from tests.support.live_server import tiny_server

    root = tmp_path_factory.mktemp("live")
    env = {
        "TRUSTSERVE_API_KEYS": f"{LIVE_READ_KEY}:read,{LIVE_ADMIN_KEY}:admin",
        "TRUSTSERVE_MULTIMODAL_DIR": str(multimodal_dir),
        "TRUSTSERVE_MAX_QUEUE_SIZE": "32",
        "TRUSTSERVE_MAX_BATCH_SIZE": "16",
        "TRUSTSERVE_LOG_LEVEL": "DEBUG",
        "TRUSTSERVE_BODY_TIMEOUT_S": "2",  # slow-body test: a dribbling upload is cut off after ~2 s
    }
    server = tiny_server(tiny_models_dir, root / "store", log_path=root / "server.log", env=env)
    with server:
        yield server
