"""POST /v1/classify through the real app (tiny random-weight model): both body forms, odd images, errors."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.conftest import image_bytes

LABELS = ["espresso", "a cat", "a rocket"]


def _multipart(client, files, labels=LABELS, **fields):  # type: ignore[no-untyped-def]
    data = {"labels": json.dumps(labels), **fields} if labels is not None else fields
    return client.post(
        "/v1/classify",
        files=[("image", (f"x{i}.png", b, "image/png")) for i, b in enumerate(files)],
        data=data,
    )


def test_multipart_answer_shape(client) -> None:  # type: ignore[no-untyped-def]
    r = _multipart(client, [image_bytes()], top_k=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-clip"
    [result] = body["results"]
    assert result["prediction"]["label"] in LABELS
    assert len(result["top_k"]) == 2
    full = _multipart(client, [image_bytes()], top_k=3).json()["results"][0]["top_k"]
    assert abs(sum(p["probability"] for p in full) - 1) < 1e-5
    for name in ("msp", "max_logit", "energy", "neg_entropy", "doctor_alpha"):
        assert isinstance(result["scores"][name], float)
    assert result["confidence"] == result["scores"]["msp"]
    assert result["decision"] == {
        "accept": None,
        "threshold": None,
        "score": "msp",
        "rule": None,
        "guarantee": None,
        "calibrated": False,
        "applies_to": "prediction",
        "note": "ad-hoc labels have no calibrated reject rule: use a calibrated label set",
    }
    assert "no image prototypes" in result["trust"]["note"]
    assert r.headers["x-request-id"]


def test_json_and_multipart_agree(client) -> None:  # type: ignore[no-untyped-def]
    raw = image_bytes(seed=3)
    a = _multipart(client, [raw]).json()["results"][0]
    payload = {"images": [base64.b64encode(raw).decode()], "labels": LABELS}
    b = client.post("/v1/classify", json=payload).json()
    assert a["prediction"] == b["results"][0]["prediction"]
    assert a["scores"]["msp"] == pytest.approx(b["results"][0]["scores"]["msp"], abs=1e-6)


def test_several_images_and_repeated_label_fields(client) -> None:  # type: ignore[no-untyped-def]
    files = [("image", ("a.png", image_bytes(seed=i), "image/png")) for i in range(3)]
    r = client.post("/v1/classify", files=files, data={"labels": ["cat", "dog"]})
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["results"]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("fmt", "mode", "save"),
    [
        ("JPEG", "CMYK", {}),
        ("PNG", "P", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "L", {}),
        ("WEBP", "RGB", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("PNG", "I;16", {}),
    ],
)
def test_odd_but_valid_images_are_classified(client, fmt, mode, save) -> None:  # type: ignore[no-untyped-def]
    if mode == "I;16":
        img = Image.new("I;16", (30, 20), 30000)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        raw = buf.getvalue()
    else:
        raw = image_bytes(fmt, mode=mode, **save)
    assert _multipart(client, [raw]).status_code == 200


def test_animated_gif_and_exif_rotation_and_1x1(client) -> None:  # type: ignore[no-untyped-def]
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert _multipart(client, [buf.getvalue()]).status_code == 200
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert _multipart(client, [buf.getvalue()]).status_code == 200
    assert _multipart(client, [image_bytes(size=(1, 1))]).status_code == 200


@pytest.mark.parametrize(
    ("make_request", "status", "code"),
    [
        (lambda c: _multipart(c, [b""]), 400, "empty_image"),
        (lambda c: _multipart(c, [b"not an image at all"]), 415, "not_an_image"),
        (lambda c: _multipart(c, [image_bytes("JPEG")[:200]]), 422, "corrupt_image"),
        (lambda c: _multipart(c, [image_bytes()], labels=[]), 422, "invalid_labels"),
        (lambda c: _multipart(c, [image_bytes()], labels=["cat", " "]), 422, "invalid_labels"),
        (lambda c: _multipart(c, [image_bytes()], labels=["cat", "Cat"]), 422, "duplicate_labels"),
        (lambda c: _multipart(c, [image_bytes()], labels=["cat", "x" * 500]), 422, "label_too_long"),
        (
            lambda c: _multipart(c, [image_bytes()], labels=[f"l{i}" for i in range(5000)]),
            422,
            "too_many_labels",
        ),
        (lambda c: _multipart(c, [image_bytes()], labels=["cat", "d\x00g"]), 422, "invalid_labels"),
        (lambda c: _multipart(c, [image_bytes()], labels=None), 422, "invalid_request"),
        (lambda c: _multipart(c, [image_bytes()], templates='["no slot"]'), 422, "invalid_templates"),
        (lambda c: _multipart(c, [image_bytes()], templates='["{0} {}"]'), 422, "invalid_templates"),
        (lambda c: _multipart(c, [image_bytes()], top_k="many"), 422, "invalid_top_k"),
        (lambda c: c.post("/v1/classify", json={"images": ["@@@"], "labels": LABELS}), 400, "invalid_base64"),
        (
            lambda c: c.post("/v1/classify", content=b"{nope", headers={"content-type": "application/json"}),
            400,
            "malformed_json",
        ),
        (
            lambda c: c.post(
                "/v1/classify",
                content=b"[" * 100000 + b"]" * 100000,
                headers={"content-type": "application/json"},
            ),
            400,
            "malformed_json",
        ),
        (
            lambda c: c.post("/v1/classify", content=b"hello", headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (lambda c: c.post("/v1/classify", json={"images": [], "labels": LABELS}), 422, "invalid_request"),
        (
            lambda c: c.post("/v1/classify", json={"images": ["aGk="], "labels": LABELS, "label_set": "x"}),
            422,
            "invalid_request",
        ),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_next_request_works(client, make_request, status, code) -> None:  # type: ignore[no-untyped-def]
    r = make_request(client)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert _multipart(client, [image_bytes()]).status_code == 200


def test_decompression_bomb_is_refused(client) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG")
    r = _multipart(client, [buf.getvalue()])
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "image_too_large"


def test_body_size_limit(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(max_body_bytes=4096)
    r = _multipart(client, [image_bytes(size=(200, 200))])
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def _decoded_images(client) -> float:  # type: ignore[no-untyped-def]
    engine = client.app.state.engine
    histogram = engine.metrics.stage_duration.labels("decode", engine.model_id)
    return next(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_count"))


@pytest.mark.parametrize(
    ("sizes", "status"),
    [([(120, 100)], 413), ([(80, 80), (80, 80)], 413), ([(60, 60), (60, 60)], 200), ([(90, 100)], 200)],
)
def test_request_pixel_budget_is_checked_before_any_decoding(app_factory, sizes, status) -> None:  # type: ignore[no-untyped-def]
    """One image (budget checked from the header the decoder reads) and several (all headers first)."""
    client = app_factory(max_request_pixels=10_000)
    decoded = _decoded_images(client)
    r = _multipart(client, [image_bytes(size=size) for size in sizes])
    assert r.status_code == status, r.text
    if status == 413:
        assert r.json()["error"]["code"] == "too_many_pixels"
        assert _decoded_images(client) == decoded
    else:
        assert _decoded_images(client) == decoded + len(sizes)


def test_text_embeddings_are_cached(client) -> None:  # type: ignore[no-untyped-def]
    engine = client.app.state.engine
    _multipart(client, [image_bytes()], labels=["zebra", "okapi"])
    misses = engine.text_cache.misses
    _multipart(client, [image_bytes(seed=1)], labels=["okapi", "zebra"])
    assert engine.text_cache.misses == misses
