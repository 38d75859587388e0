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


@pytest.mark.parametrize(
    ("host", "keys", "opt_in", "status"),
    [
        ("0.0.0.0", None, False, 403),  # public bind, no keys: changes refused by default
        ("0.0.0.0", None, True, 201),  # ... unless the operator opted in
        ("::", None, False, 403),
        ("127.0.0.1", None, False, 201),  # loopback: a local user's own server
        ("localhost", None, False, 201),
        ("0.0.0.0", KEYS, False, 201),  # keys: the admin key decides
    ],
)
def test_admin_writes_are_secure_by_default(app_factory, caplog, host, keys, opt_in, status) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(host=host, api_keys=keys, allow_unauthenticated=opt_in)
    headers = {"Authorization": "Bearer admin-key-456"} if keys else {}
    r = client.post("/v1/label-sets", json={"id": "animals", "labels": ["cat", "dog"]}, headers=headers)
    assert r.status_code == status, r.text
    if status == 403:
        assert r.json()["error"]["code"] == "admin_writes_disabled"
        assert "TRUSTSERVE_API_KEYS" in r.json()["error"]["message"]
        assert any("admin writes" in rec.getMessage() for rec in caplog.records)  # said at start-up
        read = {"X-API-Key": "reader-key-123"} if keys else {}
        assert _classify(client, read).status_code == 200  # classification stays open


@pytest.mark.parametrize(("public", "status"), [(False, 401), (True, 200)])
def test_api_docs_follow_the_keys_unless_public(app_factory, public, status) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(api_keys=KEYS, public_docs=public)
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert client.get(path).status_code == status, path
        assert client.get(path, headers={"X-API-Key": "reader-key-123"}).status_code == 200, path
    assert (
        "/v1/classify" in client.get("/openapi.json", headers={"X-API-Key": "reader-key-123"}).json()["paths"]
    )


def test_a_trailing_slash_is_not_redirected_to_the_host_header(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/v1/label-sets/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers


def test_logged_paths_and_echoed_ids_are_short(client, caplog) -> None:  # type: ignore[no-untyped-def]
    long_id = "x" * 60_000
    caplog.set_level("INFO", logger="trustserve.access")
    r = client.delete(f"/v1/label-sets/{long_id}")
    assert r.status_code == 404 and len(r.content) < 400
    [line] = [
        rec.getMessage()
        for rec in caplog.records
        if rec.name == "trustserve.access" and "DELETE" in rec.getMessage()
    ]
    assert len(line) < 400 and "60015 chars" in line


def test_json_bodies_are_bounded_by_their_element_count(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(max_json_items=1000)
    r = client.post(
        "/v1/classify",
        content=b'{"labels": [' + b'"a",' * 2000 + b'"b"]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "json_too_complex"
    r = client.post("/v1/label-sets", json={"id": "ok", "labels": [f"l{i}" for i in range(100)]})
    assert r.status_code == 201
    r = client.post("/v1/label-sets", json={"id": "flood", "labels": [f"l{i}" for i in range(2000)]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "json_too_complex"  # FastAPI-parsed too
