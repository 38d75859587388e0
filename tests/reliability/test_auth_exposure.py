"""Auth and exposure: every operation needs the right API-key scope when keys are configured; keys never
appear in logs, error messages or metrics; the server never fetches a URL a client supplies (no SSRF);
stores and checkpoints are never unpickled (static scan of app/ and hostile files on disk)."""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import wait_ready
from tests.reliability import images as img
from tests.reliability.conftest import make_settings
from tests.reliability.multimodal_models import VECTORS, good_vectors

READ_KEY = "rk-7f3a9c1e5b2d4680-read"
ADMIN_KEY = "ak-91c2e8d47b6f0a35-admin"
WRONG_KEY = "wk-0000deadbeef0000-wrong"
KEYS = f"{READ_KEY}:read,{ADMIN_KEY}:admin"
APP_DIR = Path(__file__).resolve().parents[2] / "app"

# The auth contract, operation by operation. A new route must be added here (the test below compares this
# table with the server's OpenAPI document), so nothing ships without a decision about its scope.
PUBLIC = {"GET /livez", "GET /readyz", "GET /metrics", "GET /v1/access"}  # access: what the key may do
READ = {
    "GET /v1/models",
    "POST /v1/classify",
    "GET /v1/label-sets",
    "GET /v1/label-sets/{label_set_id}",
    "GET /v1/label-sets/{label_set_id}/export",
    "GET /v1/label-sets/{label_set_id}/monitor",
    "GET /v1/multimodal/models",
    "POST /v1/multimodal/{model}/predict",
}
ADMIN = {
    "POST /v1/label-sets",
    "POST /v1/label-sets/import",
    "PATCH /v1/label-sets/{label_set_id}",
    "DELETE /v1/label-sets/{label_set_id}",
    "POST /v1/label-sets/{label_set_id}/classes",
    "DELETE /v1/label-sets/{label_set_id}/classes/{label}",
    "POST /v1/label-sets/{label_set_id}/images",
    "POST /v1/label-sets/{label_set_id}/calibrate",
    "POST /v1/label-sets/{label_set_id}/images/archive",
    "POST /v1/label-sets/{label_set_id}/risk-coverage",  # costs what a calibration costs
}
UNPROTECTED_DEFECTS: dict[str, str] = {}  # operation -> reason, as strict xfails (none open)
PATH_VALUES = {"{label_set_id}": "auth-set", "{label}": "red", "{model}": VECTORS}


def _url(operation: str) -> tuple[str, str]:
    method, path = operation.split(" ", 1)
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    return method, path


@pytest.fixture(scope="module")
def keyed_client(tiny_models_dir: Path, multimodal_dir: Path, tmp_path_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """The app with a read key and an admin key configured (logs captured by the test)."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    torch.manual_seed(0)
    settings = make_settings(
        tiny_models_dir,
        tmp_path_factory.mktemp("auth-store"),
        multimodal_dir=multimodal_dir,
        api_keys=KEYS,
        log_level="DEBUG",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        r = client.post(
            "/v1/label-sets",
            json={"id": "auth-set", "labels": ["red", "green"]},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert r.status_code == 201, r.text
        yield client


def test_the_auth_table_lists_every_operation(keyed_client) -> None:  # type: ignore[no-untyped-def]
    paths = keyed_client.app.openapi()["paths"]
    operations = {f"{m.upper()} {p}" for p, ops in paths.items() for m in ops}
    assert operations == PUBLIC | READ | ADMIN
    assert not (PUBLIC & READ or PUBLIC & ADMIN or READ & ADMIN)
    mutating = {op for op in operations if not op.startswith("GET ")}
    assert mutating - ADMIN == {"POST /v1/classify", "POST /v1/multimodal/{model}/predict"}, (
        "only the two prediction endpoints may change nothing under a non-GET method"
    )


def _param(operation: str) -> object:
    marks = []
    if operation in UNPROTECTED_DEFECTS:
        marks.append(pytest.mark.xfail(strict=True, reason=UNPROTECTED_DEFECTS[operation]))
    return pytest.param(operation, id=operation, marks=marks)


@pytest.mark.parametrize("operation", [_param(op) for op in sorted(READ | ADMIN)])
def test_operation_refuses_missing_and_wrong_keys(keyed_client, operation: str) -> None:  # type: ignore[no-untyped-def]
    method, path = _url(operation)
    attempts = {
        "no key": {},
        "wrong bearer": {"Authorization": f"Bearer {WRONG_KEY}"},
        "wrong X-API-Key": {"X-API-Key": WRONG_KEY},
        "empty bearer": {"Authorization": "Bearer "},
        "basic scheme": {"Authorization": "Basic " + base64.b64encode(ADMIN_KEY.encode()).decode()},
        "key as query": {},
    }
    for what, headers in attempts.items():
        params = {"api_key": ADMIN_KEY} if what == "key as query" else None
        r = keyed_client.request(method, path, headers=headers, params=params)
        assert r.status_code == 401, f"{operation} with {what}: {r.status_code} {r.text[:200]}"
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers.get("www-authenticate") == "Bearer"
    r = keyed_client.request(method, path, headers={"Authorization": f"Bearer {READ_KEY}"})
    if operation in ADMIN:
        assert r.status_code == 403, f"{operation} with the read key: {r.status_code} {r.text[:200]}"
        assert r.json()["error"]["code"] == "forbidden"
    else:
        assert r.status_code not in (401, 403), f"{operation} refused the read key: {r.text[:200]}"


def test_admin_key_passes_every_scope_check(keyed_client) -> None:  # type: ignore[no-untyped-def]
    for operation in sorted(READ | ADMIN):
        method, path = _url(operation)
        if method == "DELETE":  # keep the label set: a stale version answers 409 after the auth check
            path += "?expected_version=999"
        r = keyed_client.request(method, path, headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code not in (401, 403), f"{operation}: {r.status_code} {r.text[:200]}"


def test_public_operations_need_no_key(keyed_client) -> None:  # type: ignore[no-untyped-def]
    for operation in sorted(PUBLIC):
        method, path = _url(operation)
        r = keyed_client.request(method, path)
        assert r.status_code == 200, f"{operation}: {r.status_code} {r.text[:200]}"
        if path == "/metrics":
            assert "trustserve_http_requests_in_flight" in r.text
        elif path == "/v1/access":  # without a key: keys are needed, nothing is allowed
            assert r.json() | {"note": None} == {
                "keys_required": True,
                "scope": None,
                "can_write": False,
                "docs_public": False,
                "note": None,
            }
        else:
            assert r.json()["status"] == "ok"


def test_keys_never_appear_in_logs_errors_or_metrics(keyed_client, caplog) -> None:  # type: ignore[no-untyped-def]
    """Right, read-only and wrong keys on failing requests: no key in any log record (message, arguments
    or extra fields), response body or header, or in /metrics."""
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    failing = [
        ("POST", "/v1/classify", {"content": b"{bad json", "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/label-sets", {"json": {"id": "BAD ID", "labels": ["a"]}}),
        ("GET", "/v1/label-sets/nope", {}),
        ("PATCH", "/v1/label-sets/auth-set", {"json": {"alpha": "x"}}),
        ("POST", "/v1/classify", {"files": [("image", ("k.png", b"", "image/png"))],
                                  "data": {"labels": json.dumps(["a", "b"])}}),
    ]  # fmt: skip
    for key in (READ_KEY, ADMIN_KEY, WRONG_KEY):
        for auth in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            for method, path, kwargs in failing:
                headers = {**kwargs.get("headers", {}), **auth}
                r = keyed_client.request(method, path, **{**kwargs, "headers": headers})
                assert r.status_code >= 400
                answers.append(r.text + json.dumps(dict(r.headers)))
    answers.append(keyed_client.get("/metrics").text)
    assert caplog.records, "no log records captured"
    logged = "\n".join(f"{rec.getMessage()} {json.dumps(vars(rec), default=str)}" for rec in caplog.records)
    for key in (READ_KEY, ADMIN_KEY, WRONG_KEY):
        secret = key.split("-")[1]
        assert secret not in logged, "an API key was logged"
        assert not [a for a in answers if secret in a], "an API key appeared in a response"


# -- SSRF ---------------------------------------------------------------------------------------------
class _Listener:
    """A loopback TCP listener that counts connections (a would-be SSRF target)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_client_supplied_urls_are_never_fetched(keyed_client) -> None:  # type: ignore[no-untyped-def]
    listener = _Listener()
    try:
        url = f"http://127.0.0.1:{listener.port}/x.png"
        admin = {"X-API-Key": ADMIN_KEY}
        svg = f'<svg xmlns="http://www.w3.org/2000/svg"><image href="{url}"/></svg>'.encode()
        exif = img.noise((16, 16)).getexif()
        exif[0x010E] = url
        exif_jpeg = img.encode(img.noise((16, 16)), "JPEG", exif=exif.tobytes())
        requests = [
            ("POST", "/v1/classify", {"json": {"images": [url], "labels": ["a", "b"]}}),
            ("POST", "/v1/classify", {"json": {"images": [f"data:image/png;base64,{url}"],
                                               "labels": ["a", "b"]}}),
            ("POST", "/v1/classify", {"json": {"images": [base64.b64encode(url.encode()).decode()],
                                               "labels": ["a", "b"]}}),
            ("POST", "/v1/classify", {"json": {"images": ["aGk="], "labels": ["a", "b"], "image_url": url}}),
            ("POST", "/v1/classify", {"data": {"image": url, "labels": '["a","b"]'}}),
            ("POST", "/v1/classify", {"files": [("image", ("u.svg", svg, "image/svg+xml"))],
                                      "data": {"labels": '["a","b"]'}}),
            ("POST", "/v1/classify", {"files": [("image", ("u.txt", url.encode(), "text/uri-list"))],
                                      "data": {"labels": '["a","b"]'}}),
            ("POST", "/v1/classify", {"files": [("image", ("e.jpg", exif_jpeg, "image/jpeg"))],
                                      "data": {"labels": '["a","b"]'}}),
            ("POST", "/v1/classify", {"json": {"images": ["aGk="], "label_set": url}}),
            ("POST", "/v1/label-sets", {"json": {"id": "ssrf", "labels": ["a", "b"], "model": url}}),
            ("POST", "/v1/label-sets", {"json": {"id": "ssrf2", "labels": [url, "b"],
                                                 "templates": [url + " {}"]}}),
            ("POST", "/v1/label-sets/import", {"params": {"url": url}, "content": url.encode()}),
            ("POST", "/v1/label-sets/auth-set/images", {"data": {"images": url, "label": "red"}}),
            ("POST", f"/v1/multimodal/{VECTORS}/predict", {"json": {"inputs": {"video": url}}}),
            ("POST", f"/v1/multimodal/{VECTORS}/predict", {"data": {"video": url, "audio": "[0,0,0,0,0,0]"}}),
            ("POST", "/v1/classify", {"json": {"images": ["aGk="], "labels": ["a", "b"]},
                                      "headers": {"X-Forwarded-Host": f"127.0.0.1:{listener.port}",
                                                  "Referer": url, "Location": url}}),
        ]  # fmt: skip
        for method, path, kwargs in requests:
            headers = {**admin, **kwargs.pop("headers", {})}
            r = keyed_client.request(method, path, headers=headers, **kwargs)
            assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text[:200]}"
        for _ in range(5):  # give a (wrong) background fetch a moment to connect
            threading.Event().wait(0.05)
        assert listener.connections == 0, "the server connected to a URL supplied by a client"
    finally:
        listener.close()


NETWORK_MODULES = {
    "httpx",
    "requests",
    "urllib.request",
    "urllib3",
    "aiohttp",
    "http.client",
    "socket",
    "ftplib",
}
NETWORK_ALLOWED = {  # client-side code: the Python client and the CLI that talks to a server
    "app/client.py",
    "app/labelsets/cli.py",
    "app/labelsets/remote_cli.py",
}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _sources() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted(APP_DIR.rglob("*.py")):
        rel = path.relative_to(APP_DIR.parent).as_posix()
        yield rel, ast.parse(path.read_text(), filename=rel)


def test_server_code_imports_no_network_client() -> None:
    offenders = {}
    for rel, tree in _sources():
        if rel in NETWORK_ALLOWED:
            continue
        bad = {
            n for n in _imports(tree) if n in NETWORK_MODULES or n.split(".")[0] in {"requests", "aiohttp"}
        }
        if bad:
            offenders[rel] = sorted(bad)
    assert not offenders, f"server code that could fetch URLs: {offenders}"


# -- no unpickling ----------------------------------------------------------------------------------------
RESTRICTED_UNPICKLER = {"app/trust/datasets.py"}  # NumpyOnlyUnpickler: resolves ndarray globals only


def _call_name(node: ast.Call) -> str:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str) -> object:
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "dynamic"
    return None


def test_no_code_path_unpickles() -> None:
    """pickle/dill/joblib loads, torch.load without weights_only=True, np.load(allow_pickle=True),
    yaml.load/unsafe_load: none in app/ (one restricted, numpy-only unpickler for a dataset wheel)."""
    offenders = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            last = name.rsplit(".", 1)[-1]
            if name in {"pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load",
                        "pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load", "yaml.load",
                        "cloudpickle.loads", "marshal.loads", "shelve.open"}:  # fmt: skip
                offenders.append(f"{rel}:{node.lineno} {name}")
            elif name == "torch.load" and _keyword(node, "weights_only") is not True:
                offenders.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
            elif last == "load" and name.startswith(("np.", "numpy.")) and _keyword(node, "allow_pickle"):
                offenders.append(f"{rel}:{node.lineno} np.load(allow_pickle=True)")
            elif last == "Unpickler" and rel not in RESTRICTED_UNPICKLER:
                offenders.append(f"{rel}:{node.lineno} {name}")
    assert not offenders, offenders


class _Boom:
    """Unpickling this runs ``os.mkdir(marker)`` — proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


@pytest.fixture()
def pickle_bomb(tmp_path: Path) -> Iterator[bytes]:
    """A pickle whose loading would create ``tmp_path/PWNED``; the test fails if that ever happens."""
    marker = tmp_path / "PWNED"
    yield pickle.dumps(_Boom(marker))
    assert not marker.exists(), "a pickled payload was executed"


def test_pickled_label_set_arrays_are_refused_not_run(
    tmp_path: Path, tiny_models_dir: Path, pickle_bomb
) -> None:  # type: ignore[no-untyped-def]
    """A store entry whose (correctly checksummed) arrays file is a pickle: the store refuses it and the
    service a server starts with reports it unavailable."""
    import asyncio
    import hashlib

    from app.labelsets.service import LabelSetService
    from app.labelsets.store import DirectoryStore, _canonical

    store = DirectoryStore(tmp_path / "store")
    folder = store.root / "label-sets" / "evil"
    folder.mkdir(parents=True)
    (folder / "v00000001.arrays.safetensors").write_bytes(pickle_bomb)
    meta = {"id": "evil", "version": 1, "labels": ["a", "b"], "templates": ["{}"], "model": "tiny-clip",
            "aux_encoder": "vlm", "embedding_dim": 16}  # fmt: skip
    digest = hashlib.sha256(pickle_bomb).hexdigest()
    files = {"arrays": {"path": "v00000001.arrays.safetensors", "sha256": digest, "bytes": len(pickle_bomb)}}
    body = {"format": "trustserve.labelset/1", "id": "evil", "version": 1, "meta": meta, "files": files}
    (folder / "manifest.json").write_bytes(
        _canonical({**body, "checksum": hashlib.sha256(_canonical(body)).hexdigest()})
    )
    with pytest.raises(Exception, match="evil"):
        store.load("evil")
    settings = make_settings(tiny_models_dir, tmp_path / "store")
    report = asyncio.run(LabelSetService(store=store, engine=None, settings=settings).repository.load_all())  # type: ignore[arg-type]
    assert "evil" in report.failed


def test_pickled_open_clip_checkpoint_is_refused_not_run(tmp_path: Path, pickle_bomb) -> None:  # type: ignore[no-untyped-def]
    from app.vlm.base import create_backend
    from tests.support.tiny_model import TINY_ARCH

    checkpoint = tmp_path / "evil.pt"
    checkpoint.write_bytes(pickle_bomb)
    with pytest.raises(Exception):  # noqa: B017 - any refusal is fine; executing the payload is not
        create_backend("open_clip", device="cpu", dtype="float32", architecture=TINY_ARCH,
                       pretrained=str(checkpoint))  # fmt: skip


def test_pickled_multimodal_weights_are_skipped_not_run(tmp_path: Path, pickle_bomb) -> None:  # type: ignore[no-untyped-def]
    from app.multimodal.service import MultimodalService
    from tests.reliability.multimodal_models import MEDIA, write_multimodal_dir

    mm = write_multimodal_dir(tmp_path / "mm")
    (mm / VECTORS / "model.safetensors").write_bytes(pickle_bomb)
    assert MultimodalService.from_dirs([mm]).names == [MEDIA]


def test_predicting_with_good_vectors_still_works(keyed_client) -> None:  # type: ignore[no-untyped-def]
    """Sanity: the multimodal model these tests aim at is loaded and answers a well-formed request."""
    r = keyed_client.post(
        f"/v1/multimodal/{VECTORS}/predict", json={"inputs": good_vectors()}, headers={"X-API-Key": READ_KEY}
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == VECTORS and data["prediction"] == data["top_k"][0]
    assert data["prediction"]["label"] in {"a", "b", "c", "outlier"}
    decision = data["decision"]
    assert decision["calibrated"] and decision["threshold"] == 0.5 and decision["score"] == "msp"
    assert decision["accept"] == (data["scores"]["msp"] >= 0.5)
