"""Shared fixtures: a tiny random-weight open_clip model (real code path, milliseconds per call),
settings pointing at temporary folders, and an app built around the tiny engine."""

from __future__ import annotations

import os

# before anything imports huggingface_hub (it reads these at import time): no hub look-ups in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# tests and the servers they start share 2 cores: one intra-op thread each avoids oversubscription
os.environ.setdefault("OMP_NUM_THREADS", "1")
# exported towers (ONNX / OpenVINO) of the tiny test models: content-addressed and verified on every load,
# so reusing them across runs is safe; kept apart from a user's own cache. Subprocess servers inherit it.
os.environ.setdefault(
    "TRUSTSERVE_EXPORT_CACHE_DIR",
    os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "trustserve", "export-tests"
    ),
)

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.tiny_model import TINY_PRESET, write_tiny_models_dir


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with one preset: a tiny random-weight open_clip ViT (registered config)."""
    return write_tiny_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def settings_factory(tiny_models_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Build Settings for the tiny model with a fresh store; keyword overrides win."""
    from app.config import Settings

    def make(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "model": TINY_PRESET,
            "models_dir": tiny_models_dir,
            "store_dir": tmp_path / "store",
            "device": "cpu",
            "max_wait_ms": 2.0,
            "log_json": False,
        }
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture()
def app_factory(settings_factory):  # type: ignore[no-untyped-def]
    """``make(**settings) -> TestClient`` around the real create_app and the tiny model, started."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        torch.manual_seed(0)
        client = TestClient(create_app(settings_factory(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def wait_ready(client, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        if "unavailable" in r.text:
            raise AssertionError(f"server failed to start: {r.text}")
        time.sleep(0.05)
    raise AssertionError("server not ready in time")


@pytest.fixture()
def client(app_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    return app_factory()


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (48, 40), seed: int = 0, mode: str = "RGB", **save: object
) -> bytes:
    """A small random image encoded in ``fmt``."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()
