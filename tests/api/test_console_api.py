"""The endpoints added for the web console and the label-set commands, over HTTP on the real app with the
tiny model: GET /v1/access, POST /v1/label-sets/{id}/images/archive and POST .../{id}/risk-coverage."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from app.trust.metrics import risk_coverage_curve
from tests.api.test_label_set_routes import LABELS, calibration_form, create_with_support, png
from tests.labelsets.conftest import colour_image
from tests.test_classfolders import make_tar, make_zip

READ, ADMIN = "reader-key-123", "admin-key-456"
KEYS = f"{READ}:read,{ADMIN}:admin"


# -- /v1/access ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "key", "expected"),
    [
        ({}, None, {"keys_required": False, "scope": "admin", "can_write": True, "docs_public": True}),
        (
            {"host": "0.0.0.0"},
            None,
            {"keys_required": False, "scope": "read", "can_write": False, "docs_public": True},
        ),
        ({"api_keys": KEYS}, None, {"keys_required": True, "scope": None, "can_write": False}),
        ({"api_keys": KEYS}, READ, {"scope": "read", "can_write": False, "docs_public": False}),
        ({"api_keys": KEYS}, ADMIN, {"scope": "admin", "can_write": True}),
        ({"api_keys": KEYS, "public_docs": True}, None, {"scope": None, "docs_public": True}),
    ],
)
def test_access_says_what_the_key_may_do(app_factory, settings, key, expected) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(**settings)
    r = client.get("/v1/access", headers={"Authorization": f"Bearer {key}"} if key else {})
    assert r.status_code == 200, r.text
    assert r.json() == {**r.json(), **expected}
    if settings.get("host") == "0.0.0.0":
        assert "TRUSTSERVE_API_KEYS" in r.json()["note"]


def test_access_refuses_a_wrong_key(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(api_keys=KEYS)
    r = client.get("/v1/access", headers={"X-API-Key": "wrong-key-000"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


# -- support images from an archive --------------------------------------------------------------------
def _members(shots: int = 2) -> dict[str, bytes]:
    return {f"colours/{c}/{i}.png": png(colour_image(c, i)) for c in LABELS for i in range(shots)}


@pytest.mark.parametrize("form", ["zip raw", "tar.gz raw", "tar multipart"])
def test_support_images_from_an_archive_of_class_folders(client, form: str) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/v1/label-sets", json={"id": "colours", "labels": LABELS}).status_code == 201
    members = {**_members(), "colours/README.md": b"about", "colours/red/.DS_Store": b""}
    url = "/v1/label-sets/colours/images/archive"
    if form == "zip raw":
        r = client.post(url, content=make_zip(members), headers={"content-type": "application/zip"})
    elif form == "tar.gz raw":
        r = client.post(
            url, content=gzip.compress(make_tar(members)), headers={"content-type": "application/gzip"}
        )
    else:
        r = client.post(url, files={"archive": ("set.tar", make_tar(members), "application/x-tar")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == {label: 2 for label in LABELS} and body["support_counts"] == body["added"]
    assert body["skipped"] == 2 and body["calibration_dropped"] is False
    got = client.get("/v1/label-sets/colours").json()
    assert got["version"] == 2 and all(c["has_prototype"] for c in got["classes"])


def test_archive_errors_change_nothing(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(max_archive_members=8)
    assert client.post("/v1/label-sets", json={"id": "colours", "labels": LABELS}).status_code == 201
    url = "/v1/label-sets/colours/images/archive"

    def post(data: bytes) -> tuple[int, str]:
        r = client.post(url, content=data, headers={"content-type": "application/octet-stream"})
        return r.status_code, r.json()["error"]["code"]

    assert post(make_zip({**_members(1), "colours/purple/1.png": png(colour_image("red"))})) == (
        422,
        "unknown_class",
    )
    assert post(make_zip({f"colours/red/{i}.png": b"" for i in range(9)})) == (
        413,
        "archive_too_many_entries",
    )
    assert post(make_zip({"colours/notes.txt": b"x"})) == (422, "no_images")
    assert post(make_zip({"red.png": png(colour_image("red"))})) == (422, "image_outside_class_folder")
    assert 400 <= post(make_zip({"colours/red/1.png": b"\x89PNG\r\n\x1a\nbroken"}))[0] < 500
    assert post(b"just some bytes") == (422, "unsupported_archive")
    assert post(b"") == (422, "missing_archive")
    r = client.post("/v1/label-sets/nope/images/archive", content=make_zip(_members(1)))
    assert r.status_code == 404
    assert client.get("/v1/label-sets/colours").json()["version"] == 1  # nothing was stored


def test_archive_upload_needs_the_admin_key(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(api_keys=KEYS)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    client.post("/v1/label-sets", json={"id": "colours", "labels": LABELS}, headers=admin)
    url, data = "/v1/label-sets/colours/images/archive", make_zip(_members(1))
    assert client.post(url, content=data, headers={"X-API-Key": READ}).status_code == 403
    assert client.post(url, content=data, headers=admin).status_code == 200


# -- risk-coverage -------------------------------------------------------------------------------------
def test_risk_coverage_is_the_curve_of_the_scores_classify_serves(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client)
    files, data = calibration_form(30)
    r = client.post("/v1/label-sets/colours/calibrate", files=files,
                    data={**data, "rule": "target_coverage", "target_coverage": "0.8"})  # fmt: skip
    assert r.status_code == 200, r.text
    calibration = r.json()["calibration"]

    files, data = calibration_form(30)
    r = client.post("/v1/label-sets/colours/risk-coverage", files=files, data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["score"] == calibration["score"] and body["n"] == 30 and body["version"] == 3
    # the same images through /v1/classify give the same curve
    labels = json.loads(data["labels"])
    answer = client.post(
        "/v1/classify", files=[("image", f[1]) for f in files], data={"label_set": "colours"}
    )
    results = answer.json()["results"]
    conf = [res["confidence"] for res in results]
    correct = [int(res["prediction"]["label"] == label) for res, label in zip(results, labels)]
    curve = risk_coverage_curve(conf, correct)
    assert [p["coverage"] for p in body["points"]] == pytest.approx(curve.coverage.tolist())
    assert [p["risk"] for p in body["points"]] == pytest.approx(curve.risk.tolist())
    assert body["accuracy"] == pytest.approx(np.mean(correct))
    # the calibrated rule on its own calibration images: the coverage and risk of the record
    point = body["calibration"]
    assert point["threshold"] == calibration["threshold"] and point["rule"] == "target_coverage"
    assert point["coverage"] == pytest.approx(calibration["coverage"])
    assert point["risk"] == pytest.approx(calibration["risk"])
    assert point["accepted"] == sum(res["decision"]["accept"] for res in results)


def test_risk_coverage_options_and_errors(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/v1/label-sets", json={"id": "colours", "labels": LABELS}).status_code == 201
    url = "/v1/label-sets/colours/risk-coverage"
    files, data = calibration_form(12)
    r = client.post(url, files=files, data=data)  # trustvlm needs prototypes: say so
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_prototypes"
    r = client.post(url, files=files, data={**data, "score": "msp", "max_points": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["points"]) == 5 and body["points"][-1]["coverage"] == 1.0 and body["calibration"] is None
    for fields, code in [
        ({"score": "energy"}, "invalid_score"),
        ({"score": "msp", "max_points": "1"}, "invalid_max_points"),
        ({"score": "msp", "max_points": "100000"}, "invalid_max_points"),
        ({"score": "msp", "max_points": "x"}, "invalid_max_points"),
        ({"score": "msp", "labels": json.dumps(["purple"] * 12)}, "unknown_class"),
        ({"score": "msp", "tune": "true"}, "unknown_field"),
    ]:
        r = client.post(url, files=files, data={**data, **fields})
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (fields, r.text)
    assert client.post("/v1/label-sets/nope/risk-coverage", files=files, data=data).status_code == 404
    assert client.get("/v1/label-sets/colours").json()["version"] == 1
