"""Readiness flips only after load + warm-up; API keys and scopes; metrics exposition; request ids."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.engine.engine import ClassificationEngine
from tests.conftest import image_bytes


def _classify(client, headers=None):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/classify",
        files=[("image", ("a.png", image_bytes(), "image/png"))],
        data={"labels": json.dumps(["cat", "dog"])},
        headers=headers or {},
    )


def test_readyz_is_red_until_warm_up_has_passed(settings_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    original = ClassificationEngine._warm_up

    def slow_warm_up(self):  # type: ignore[no-untyped-def]
        gate.wait(30)
        original(self)

    monkeypatch.setattr(ClassificationEngine, "_warm_up", slow_warm_up)
    with TestClient(create_app(settings_factory())) as client:
        import time

        deadline = time.monotonic() + 30
        while client.app.state.engine is None and time.monotonic() < deadline:  # model loaded, warming up
            time.sleep(0.02)
        assert client.get("/livez").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        assert _classify(client).status_code == 503
        gate.set()
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/readyz").json() == {"status": "ok", "detail": None}
        assert _classify(client).status_code == 200


def test_readyz_turns_red_when_the_model_breaks(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = client.app.state.engine
    assert client.get("/readyz").status_code == 200

    def broken(pixels):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error: device lost")

    monkeypatch.setattr(engine.backend, "encode_images", broken)
    engine._health_checked_at = 0.0  # expire the cached result
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"


def test_startup_failure_is_reported_on_readyz(settings_factory) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings_factory(model="no-such-preset"))) as client:
        import time

        for _ in range(200):
            r = client.get("/readyz")
            if r.json()["status"] == "unavailable":
                break
            time.sleep(0.02)
        assert r.status_code == 503
        assert "no-such-preset" in r.json()["detail"]
        assert client.get("/livez").status_code == 200


KEYS = "reader-key-123:read,admin-key-456:admin"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-key-000"}, 401),
        ({"X-API-Key": "reader-key-123"}, 200),
        ({"Authorization": "Bearer admin-key-456"}, 200),
    ],
)
def test_read_routes_need_a_key_when_keys_are_configured(app_factory, headers, status) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(api_keys=KEYS)
    r = _classify(client, headers)
    assert r.status_code == status
    assert "reader-key-123" not in r.text and "admin-key-456" not in r.text
    assert client.get("/livez").status_code == 200  # probes stay open


def test_request_id_is_echoed_and_generated(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/livez", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/livez", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 32


def test_metrics_exposition_after_traffic(client) -> None:  # type: ignore[no-untyped-def]
    assert _classify(client).status_code == 200
    text = client.get("/metrics").text
    for family in (
        "trustserve_http_requests_total",
        "trustserve_http_request_duration_seconds_bucket",
        "trustserve_stage_duration_seconds_bucket",
        "trustserve_batch_size_bucket",
        "trustserve_queue_depth",
        "trustserve_model_load_seconds",
        "trustserve_model_ready",
        "trustserve_trust_score_bucket",
    ):
        assert family in text, family
    assert 'route="/v1/classify"' in text


def test_models_endpoint_describes_the_loaded_model(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/v1/models").json()
    [model] = body["models"]
    assert model["id"] == "tiny-clip" and model["device"] == "cpu" and model["dtype"] == "float32"
    assert model["ready"] is True and "queue_depth" in model["batching"]
    assert any(p["name"] == "tiny-clip" for p in body["presets"])


def test_unknown_route_and_method_are_json_errors(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/classify")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
