"""Label sets choose their image space (issue 14), over HTTP on the real app: a tiny model whose preset
declares an independent image space (a second random-weight open_clip tower, loaded on first use on the
runtime layer). Classify, GET, PATCH, calibrate, export/import and the calibration basis follow the space
in use; a model without one refuses it."""

from __future__ import annotations

import io

from tests.api.test_label_set_routes import LABELS, calibration_form, png, upload
from tests.labelsets.conftest import colour_image
from tests.support.tiny_model import TINY_TWO_SPACES_PRESET


def _create(client, label_set_id: str, shots: int = 4, **fields: object) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/v1/label-sets", json={"id": label_set_id, "labels": LABELS, **fields})
    assert r.status_code == 201, r.text
    labels = [label for label in LABELS for _ in range(shots)]
    r = upload(client, label_set_id, labels, [png(colour_image(c, i)) for i, c in enumerate(labels)])
    assert r.status_code == 200, r.text
    return client.get(f"/v1/label-sets/{label_set_id}").json()


def _classify(client, label_set_id: str) -> dict:  # type: ignore[no-untyped-def]
    files = [("image", ("0.png", png(colour_image("red", 77)), "image/png"))]
    r = client.post("/v1/classify", files=files, data={"label_set": label_set_id})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def test_independent_space_serves_prototypes_and_queries(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(model=TINY_TWO_SPACES_PRESET, runtime="torch")
    own = _create(client, "own-space", image_space="own")
    got = _create(client, "indep", image_space="independent")
    assert got["image_space"] == "independent" and got["space"] == "independent"
    assert "tiny2" in got["image_space_encoder"] and "open_clip" in got["image_space_encoder"]
    assert own["space"] == "own" and own["image_space_encoder"] != got["image_space_encoder"]
    trust = _classify(client, "indep")["trust"]
    assert trust["image_space"] == got["image_space_encoder"] and trust["prototypes_for_prediction"]
    assert _classify(client, "own-space")["trust"]["image_space"] == own["image_space_encoder"]

    # calibrate: the basis names the independent tower; the record survives export/import
    files, data = calibration_form(60)
    r = client.post(
        "/v1/label-sets/indep/calibrate", files=files,
        data={**data, "rule": "target_coverage", "target_coverage": "0.5"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["image_space"] == "independent"
    basis = r.json()["calibration"]["basis"]["towers"]
    assert any(name.startswith("image-space:tiny2") for name in basis)
    archive = client.get("/v1/label-sets/indep/export")
    assert archive.status_code == 200
    r = client.post(
        "/v1/label-sets/import", params={"id": "indep-copy"},
        files={"archive": ("a.tar.gz", io.BytesIO(archive.content), "application/gzip")},
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    copy = client.get("/v1/label-sets/indep-copy").json()
    assert copy["space"] == "independent" and copy["calibration_applies"]
    assert _classify(client, "indep-copy")["decision"]["calibrated"] is True


def test_auto_keeps_both_spaces_and_patch_switches_without_re_encoding(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(model=TINY_TWO_SPACES_PRESET, runtime="torch")
    got = _create(client, "both", shots=8)  # the preset selects: image_space defaults to auto
    assert got["image_space"] == "auto" and got["selection_mode"] == "auto"
    selection = got["selection"]
    assert selection["evidence"] == "support-loo"
    assert selection["image_spaces_compared"] == ["own", "independent"]
    spaces = {c["space"] for c in selection["selection"]["candidates"] if c["alpha"] > 0}
    assert spaces == {"own", "independent"}
    assert got["space"] == selection["image_space"]
    files, data = calibration_form(80)  # at calibrate: both spaces on one half, the threshold on the other
    r = client.post("/v1/label-sets/both/calibrate", files=files,
                    data={**data, "rule": "target_coverage", "target_coverage": "0.5"})  # fmt: skip
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    assert cal["n"] + cal["n_tuning"] == 80 and 35 <= cal["n_tuning"] <= 40  # per class: floor of half
    assert cal["selection"]["evidence"] == "calibration"
    assert cal["selection"]["image_spaces_compared"] == ["own", "independent"]
    assert cal["selection"]["selection"]["anchor"] is not None  # anchored on what was served
    assert r.json()["image_space"] == cal["selection"]["image_space"]
    assert "disjoint" in cal["conformal"]["guarantee"]
    r = client.patch("/v1/label-sets/both", json={"image_space": "independent"})
    assert r.status_code == 200, r.text
    assert r.json()["space"] == "independent" and r.json()["image_space"] == "independent"
    r = client.patch("/v1/label-sets/both", json={"image_space": "own"})  # independent-only kept now
    assert r.status_code == 409 and r.json()["error"]["code"] == "image_space_needs_support_encodings"


def test_a_model_without_an_independent_space_refuses_it(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/label-sets", json={"id": "x", "labels": LABELS, "image_space": "independent"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_independent_image_space"
    r = client.post("/v1/label-sets", json={"id": "y", "labels": LABELS})
    assert r.status_code == 201 and r.json()["image_space"] == "own" and r.json()["space"] == "own"


def test_a_failed_load_of_the_independent_space_is_a_clear_4xx_and_is_not_retried(  # type: ignore[no-untyped-def]
    app_factory, monkeypatch
) -> None:
    """Loading the independent space can fail (e.g. a torch-free install without its export): a label set
    asking for it gets 422 ``no_independent_image_space`` every time, the load is attempted once (not an
    export per request), and ``auto`` label sets carry on in the own space."""
    import app.vlm.loading

    attempts: list[str] = []

    def failing_load(preset, name, settings):  # type: ignore[no-untyped-def]
        attempts.append(name)
        raise RuntimeError("no export of this tower and no torch to make one")

    monkeypatch.setattr(app.vlm.loading, "load_image_space_tower", failing_load)
    client = app_factory(model=TINY_TWO_SPACES_PRESET, runtime="torch")
    fixed = {"id": "fixed", "labels": LABELS, "image_space": "independent"}
    r = client.post("/v1/label-sets", json=fixed)
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_independent_image_space", r.text
    assert "loading it failed" in r.json()["error"]["message"]
    r = client.post("/v1/label-sets", json=fixed)  # from now on the model offers only "own"
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_independent_image_space", r.text
    assert attempts == ["tiny2"]
    got = _create(client, "auto-set", image_space="auto")
    assert got["space"] == "own"
    assert _classify(client, "auto-set")["trust"]["image_space"] == got["image_space_encoder"]
    assert attempts == ["tiny2"]


def test_a_stored_independent_label_set_whose_encoder_cannot_load_is_listed_unavailable(  # type: ignore[no-untyped-def]
    app_factory, monkeypatch
) -> None:
    """A restart where the independent encoder cannot load (here: a missing package, an ``ImportError``)
    still starts the server; the label set stored in that space is reported unavailable with the reason."""
    import app.vlm.loading
    from app.errors import MissingDependencyError

    first = app_factory(model=TINY_TWO_SPACES_PRESET, runtime="torch")
    assert _create(first, "indep", image_space="independent")["space"] == "independent"

    def missing(preset, name, settings):  # type: ignore[no-untyped-def]
        raise MissingDependencyError("the independent image space", "torch", "pip install torch")

    monkeypatch.setattr(app.vlm.loading, "load_image_space_tower", missing)
    restarted = app_factory(model=TINY_TWO_SPACES_PRESET, runtime="torch")
    r = restarted.get("/v1/label-sets/indep")
    assert r.status_code == 503 and r.json()["error"]["code"] == "label_set_unavailable", r.text
    assert "no independent image space" in r.json()["error"]["message"]
