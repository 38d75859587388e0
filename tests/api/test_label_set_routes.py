"""/v1/label-sets over HTTP on the real app (create_app) with the tiny random-weight model."""

from __future__ import annotations

import io
import json

from PIL import Image

from tests.labelsets.conftest import colour_image

LABELS = ["red", "green", "blue"]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def upload(client, label_set_id: str, labels: list[str], images: list[bytes], **params):  # type: ignore[no-untyped-def]
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post(
        f"/v1/label-sets/{label_set_id}/images", files=files, data={"labels": labels}, params=params
    )


def create_with_support(client, label_set_id: str = "colours", shots: int = 3) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/v1/label-sets", json={"id": label_set_id, "labels": LABELS})
    assert r.status_code == 201, r.text
    labels = [label for label in LABELS for _ in range(shots)]
    r = upload(client, label_set_id, labels, [png(colour_image(label, i)) for i, label in enumerate(labels)])
    assert r.status_code == 200, r.text
    return r.json()


def calibration_form(n: int, seed: int = 100) -> tuple[list, dict]:
    labels = [LABELS[i % 3] for i in range(n)]
    files = [
        ("images", (f"{i}.png", png(colour_image(label, seed + i)), "image/png"))
        for i, label in enumerate(labels)
    ]
    return files, {"labels": json.dumps(labels)}


def test_create_get_list_and_errors(client) -> None:  # type: ignore[no-untyped-def]
    body = create_with_support(client)
    assert body["version"] == 2 and body["support_counts"] == {"red": 3, "green": 3, "blue": 3}
    r = client.get("/v1/label-sets/colours")
    got = r.json()
    assert got["labels"] == LABELS and got["calibrated"] is False and got["prototype_index"]["kind"] == "flat"
    assert got["prototype_index"]["vectors"] == 3
    listing = client.get("/v1/label-sets").json()
    assert [s["id"] for s in listing["label_sets"]] == ["colours"] and listing["unavailable"] == []

    assert client.post("/v1/label-sets", json={"id": "colours", "labels": ["x"]}).status_code == 409
    r = client.post("/v1/label-sets", json={"id": "Not A Slug", "labels": ["x"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert client.get("/v1/label-sets/nope").status_code == 404
    assert client.post("/v1/label-sets", json={"id": "d", "labels": ["a", "a"]}).status_code == 422


def test_support_image_errors_change_nothing(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client, shots=1)
    r = upload(client, "colours", ["purple"], [png(colour_image("red"))])
    assert r.status_code == 422 and "purple" in r.json()["error"]["message"]
    r = upload(client, "colours", ["red"], [b"\x89PNG\r\n\x1a\n-not-really"])
    assert 400 <= r.status_code < 500 and "image[0]" in r.json()["error"]["message"]
    r = upload(client, "colours", ["red", "blue"], [png(colour_image("red"))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "label_count_mismatch"
    r = upload(client, "nope", ["red"], [png(colour_image("red"))])
    assert r.status_code == 404
    assert client.get("/v1/label-sets/colours").json()["version"] == 2
    # mixed sizes in one request are fine: every image is preprocessed on its own
    sizes = [(10, 12), (300, 40), (64, 64)]
    r = upload(client, "colours", ["red"] * 3, [png(colour_image("red", i, s)) for i, s in enumerate(sizes)])
    assert r.status_code == 200 and r.json()["added"] == {"red": 3}


def test_stale_writer_gets_409(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client, shots=1)
    r = upload(client, "colours", ["red"], [png(colour_image("red", 9))], expected_version=1)
    assert r.status_code == 409 and r.json()["error"]["details"]["current_version"] == 2
    r = client.patch("/v1/label-sets/colours", json={"alpha": 0.5}, headers={"If-Match": "2"})
    assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["alpha"] == 0.5
    r = client.patch("/v1/label-sets/colours", json={"alpha": 0.7}, headers={"If-Match": "2"})
    assert r.status_code == 409


def test_calibrate_then_classify_carries_decisions(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client)
    files, data = calibration_form(30)
    r = client.post("/v1/label-sets/colours/calibrate", files=files,
                    data={**data, "rule": "target_coverage", "target_coverage": "0.7"})  # fmt: skip
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    assert cal["rule"] == "target_coverage" and cal["n"] == 30 and cal["coverage"] >= 0.7
    images = [("image", (f"{i}.png", png(colour_image(LABELS[i], 900 + i)), "image/png")) for i in range(3)]
    r = client.post("/v1/classify", files=images, data={"label_set": "colours"})
    assert r.status_code == 200, r.text
    for result in r.json()["results"]:
        decision = result["decision"]
        assert decision["calibrated"] is True and decision["threshold"] == cal["threshold"]
        assert decision["accept"] == (result["confidence"] >= cal["threshold"])
    # too small for "≤ 10 % risk at δ = 0.05": refused with the minimum explained
    files, data = calibration_form(20)
    r = client.post("/v1/label-sets/colours/calibrate", files=files,
                    data={**data, "rule": "target_risk", "target_risk": "0.1", "delta": "0.05"})  # fmt: skip
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] == "calibration_set_too_small"
    assert err["details"]["min_samples"] > 20 and str(err["details"]["min_samples"]) in err["message"]
    assert client.get("/v1/label-sets/colours").json()["calibration"]["rule"] == "target_coverage"


def test_uncalibrated_classify_does_not_pretend(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client, shots=1)
    body = {
        "images": [__import__("base64").b64encode(png(colour_image("red", 5))).decode()],
        "label_set": "colours",
    }
    r = client.post("/v1/classify", json=body)
    assert r.status_code == 200, r.text
    decision = r.json()["results"][0]["decision"]
    assert decision == {**decision, "calibrated": False, "accept": None, "threshold": None}


def test_survives_restart_byte_for_byte_and_export_import(app_factory) -> None:  # type: ignore[no-untyped-def]
    first = app_factory()
    create_with_support(first)
    files, data = calibration_form(30)
    r = first.post("/v1/label-sets/colours/calibrate", files=files,
                   data={**data, "target_coverage": "0.8"})  # fmt: skip
    assert r.status_code == 200, r.text
    before = first.get("/v1/label-sets/colours").content
    archive = first.get("/v1/label-sets/colours/export")
    assert archive.headers["content-type"] == "application/gzip"
    first.__exit__(None, None, None)

    second = app_factory()  # same store directory: a restart
    assert second.get("/v1/label-sets/colours").content == before
    assert second.get("/v1/label-sets/colours/export").content == archive.content
    r = second.post("/v1/label-sets/import", params={"id": "colours-copy"}, content=archive.content,
                    headers={"content-type": "application/gzip"})  # fmt: skip
    assert r.status_code == 201, r.text
    copy, original = r.json(), second.get("/v1/label-sets/colours").json()
    assert copy["version"] == 1 and copy["classes"] == original["classes"]
    assert copy["calibration"]["threshold"] == original["calibration"]["threshold"]
    r = second.post(
        "/v1/label-sets/import", content=archive.content, headers={"content-type": "application/gzip"}
    )
    assert r.status_code == 409
    r = second.post(
        "/v1/label-sets/import", content=b"not an archive", headers={"content-type": "application/gzip"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_archive"


def test_remove_class_and_delete(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client, shots=1)
    r = client.delete("/v1/label-sets/colours/classes/green")
    assert r.status_code == 200 and r.json()["labels"] == ["red", "blue"]
    assert client.delete("/v1/label-sets/colours/classes/green").status_code == 404
    r = client.post("/v1/label-sets/colours/classes", json={"labels": ["grey"]})
    assert r.status_code == 200 and [c["has_prototype"] for c in r.json()["classes"]] == [True, True, False]
    assert client.delete("/v1/label-sets/colours").status_code == 204
    assert client.get("/v1/label-sets/colours").status_code == 404
    assert client.delete("/v1/label-sets/colours").status_code == 404
