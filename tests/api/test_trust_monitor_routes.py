"""Conformal prediction sets in classify answers and GET /v1/label-sets/{id}/monitor, over HTTP on the
real app with the tiny random-weight model."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_calibration_contract import _adapted_label_set
from tests.api.test_calibration_contract import _classify as _classify_images
from tests.api.test_label_set_routes import LABELS, calibration_form, create_with_support, png
from tests.labelsets.conftest import colour_image


def _classify(client, n: int, seed: int = 900) -> list[dict]:  # type: ignore[no-untyped-def]
    images = [
        ("image", (f"{i}.png", png(colour_image(LABELS[i % 3], seed + i)), "image/png")) for i in range(n)
    ]
    r = client.post("/v1/classify", files=images, data={"label_set": "colours"})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _trust_series(client) -> dict[tuple[str, str], float]:  # type: ignore[no-untyped-def]
    text = client.get("/metrics").text
    return {
        (s.name, s.labels.get("statistic", "")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("label_set") == "colours"
        and s.name.startswith("trustserve_trust_")
        and not s.name.startswith("trustserve_trust_score")  # the trust-score histogram is not monitoring
    }


def test_calibrated_label_set_answers_sets_and_is_monitored(app_factory) -> None:  # type: ignore[no-untyped-def]
    client = app_factory(monitor_min_samples=6, monitor_window_size=50)
    create_with_support(client)
    r = client.get("/v1/label-sets/colours/monitor")
    assert r.status_code == 200 and r.json()["calibrated"] is False and "not calibrated" in r.json()["note"]
    assert all(res["prediction_set"] is None for res in _classify(client, 3))  # not calibrated: no set
    assert _trust_series(client) == {}  # not calibrated: not monitored

    files, data = calibration_form(40)
    form = {**data, "rule": "target_coverage", "target_coverage": "0.7", "epsilon": "0.2"}
    r = client.post("/v1/label-sets/colours/calibrate", files=files, data={**form, "conformal_method": "aps"})
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    conformal, monitor = cal["conformal"], cal["monitor"]
    assert conformal["method"] == "aps" and conformal["epsilon"] == 0.2 and conformal["n"] == 40
    assert conformal["probabilities"] == "trustvlm_star"  # every class has a prototype
    assert conformal["calibration_coverage"] >= 0.8
    assert monitor["n"] == 40 and math.isclose(monitor["calibration_coverage"], cal["coverage"])
    assert len(monitor["quantiles"]) == 40

    results = _classify(client, 3)
    for res in results:
        pset = res["prediction_set"]
        assert pset["epsilon"] == 0.2 and pset["method"] == "aps" and "≥ 0.8" in pset["guarantee"]
        assert pset["labels"] == [LABELS[i] for i in pset["indices"]] and 1 <= len(pset["labels"]) <= 3
    body = client.get("/v1/label-sets/colours/monitor").json()
    assert body["window"]["samples"] == 3 and body["live_acceptance_rate"] is None  # below min samples
    assert "fewer than 6" in body["note"]
    results += _classify(client, 6, seed=950)
    body = client.get("/v1/label-sets/colours/monitor").json()
    accepted = sum(res["decision"]["accept"] for res in results)
    assert body["window"]["samples"] == 9 and body["live_acceptance_rate"] == accepted / 9
    assert body["estimated_accuracy"] is not None and body["drift"]["psi"] is not None
    assert body["window"]["start"] is not None and body["note"] is None
    series = _trust_series(client)  # /metrics has the same numbers
    assert series[("trustserve_trust_live_acceptance_ratio", "")] == body["live_acceptance_rate"]
    assert series[("trustserve_trust_drift", "psi")] == body["drift"]["psi"]
    assert series[("trustserve_trust_window_samples", "")] == 9

    # adding support images drops the calibration: sets and the live window go with it
    r = client.post("/v1/label-sets/colours/images", files=[("images", ("x.png", png(colour_image("red", 5)),
                    "image/png"))], data={"labels": ["red"]})  # fmt: skip
    assert r.status_code == 200
    assert all(res["prediction_set"] is None for res in _classify(client, 2))
    assert _trust_series(client) == {}
    assert client.get("/v1/label-sets/colours/monitor").json()["window"]["samples"] == 0


def test_delete_removes_the_window_and_bad_parameters_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client)
    files, data = calibration_form(30)
    base = {**data, "rule": "target_coverage", "target_coverage": "0.7"}
    for bad, code in (({"epsilon": "1.5"}, "invalid_epsilon"), ({"conformal_method": "raps"},
                      "invalid_conformal_method"), ({"epsilon": "x"}, "invalid_epsilon")):  # fmt: skip
        r = client.post("/v1/label-sets/colours/calibrate", files=files, data={**base, **bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    r = client.post("/v1/label-sets/colours/calibrate", files=files, data=base)
    assert r.status_code == 200 and r.json()["calibration"]["conformal"]["method"] == "lac"
    assert r.json()["calibration"]["conformal"]["epsilon"] == 0.1
    _classify(client, 3)
    assert _trust_series(client)
    assert client.delete("/v1/label-sets/colours").status_code == 204
    assert _trust_series(client) == {}
    assert client.get("/v1/label-sets/colours/monitor").status_code == 404


def test_a_calibration_that_no_longer_applies_gives_no_sets_and_no_window(client) -> None:  # type: ignore[no-untyped-def]
    """Adapted prototypes make the decision threshold not apply (issue 16's basis): the conformal
    threshold and the monitor's reference go with it."""
    got = _adapted_label_set(client)
    assert got["calibration_applies"] is False
    answer = _classify_images(client, "colours", [png(colour_image("red", 7))])["results"][0]
    assert answer["decision"]["accept"] is None and answer["prediction_set"] is None
    assert _trust_series(client) == {}
    body = client.get("/v1/label-sets/colours/monitor").json()
    assert body["window"]["samples"] == 0 and "does not apply" in body["note"]
    assert body["calibration_coverage"] is None
