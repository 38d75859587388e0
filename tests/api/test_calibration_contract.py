"""A label set's calibration applies to exactly what classify serves, over HTTP on the real app:

- defect 1: test-time adaptation that moves prototypes (a cache entry, disabling adaptation, a new
  ``max_weight``) either drops the calibration or makes answers say it does not apply;
- defect 2: ``tune=true`` with ``score=trustvlm`` changes only α (κ does not depend on T_v);
- defect 3: above 1,024 classes, calibration scores with the same top-k TrustVLM* that classify serves,
  so classify accepts exactly the calibration's share of the calibration images.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.api.test_label_set_routes import LABELS, calibration_form, create_with_support, png, upload
from tests.labelsets.conftest import COLOURS, colour_image

ADAPT = {"enabled": True, "min_score": -10.0, "max_per_class": 4, "max_weight": 0.3}


def _calibrate(client, label_set: str, n: int = 60, **fields: str) -> dict:  # type: ignore[no-untyped-def]
    files, data = calibration_form(n)
    r = client.post(f"/v1/label-sets/{label_set}/calibrate", files=files, data={**data, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def _classify(client, label_set: str, images: list[bytes]) -> dict:  # type: ignore[no-untyped-def]
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = client.post("/v1/classify", files=files, data={"label_set": label_set})
    assert r.status_code == 200, r.text
    return r.json()


def _adapted_label_set(client) -> dict:  # type: ignore[no-untyped-def]
    """A calibrated label set with adaptation on, then one classify whose images enter the cache."""
    create_with_support(client)
    assert client.patch("/v1/label-sets/colours", json={"adaptation": ADAPT}).status_code == 200
    _calibrate(client, "colours", rule="target_coverage", target_coverage="0.5", score="trustvlm")
    version = client.get("/v1/label-sets/colours").json()["version"]
    _classify(client, "colours", [png(colour_image(label, 900 + i)) for i, label in enumerate(LABELS * 2)])
    deadline = time.monotonic() + 10
    while client.get("/v1/label-sets/colours").json()["version"] == version:  # the cache write is async
        assert time.monotonic() < deadline, "the adaptation cache was never written"
        time.sleep(0.05)
    return client.get("/v1/label-sets/colours").json()


def test_a_cache_entry_makes_the_calibration_not_apply(client) -> None:  # type: ignore[no-untyped-def]
    got = _adapted_label_set(client)
    assert got["adapted"] and got["calibrated"]
    assert got["calibration_applies"] is False and "prototypes" in got["calibration_problem"]
    answer = _classify(client, "colours", [png(colour_image("red", 7))])
    decision = answer["results"][0]["decision"]
    assert decision["calibrated"] is False and decision["accept"] is None
    assert "does not apply" in decision["note"] and "recalibrate" in decision["note"]


@pytest.mark.parametrize(
    "change", [{**ADAPT, "enabled": False}, {**ADAPT, "max_weight": 0.1}], ids=["disabled", "max_weight"]
)
def test_adaptation_changes_that_move_prototypes_drop_the_calibration(client, change: dict) -> None:  # type: ignore[no-untyped-def]
    _adapted_label_set(client)
    r = client.patch("/v1/label-sets/colours", json={"adaptation": change})
    assert r.status_code == 200, r.text
    assert r.json()["calibration"] is None and r.json()["calibrated"] is False
    assert r.json()["adapted"] is (change["enabled"] is True)
    decision = _classify(client, "colours", [png(colour_image("red", 7))])["results"][0]["decision"]
    assert decision["calibrated"] is False and decision["note"].startswith("label set not calibrated")


def test_adaptation_changes_that_move_nothing_keep_the_calibration(client) -> None:  # type: ignore[no-untyped-def]
    create_with_support(client)
    _calibrate(client, "colours", rule="target_coverage", target_coverage="0.5")
    r = client.patch("/v1/label-sets/colours", json={"adaptation": {**ADAPT, "max_weight": 0.1}})
    assert r.json()["calibrated"] and r.json()["calibration_applies"]  # empty cache: prototypes unchanged
    decision = _classify(client, "colours", [png(colour_image("red", 7))])["results"][0]["decision"]
    assert decision["calibrated"] is True and decision["accept"] is not None


def test_tuning_trustvlm_changes_only_alpha(client) -> None:  # type: ignore[no-untyped-def]
    """tune=true selects α (0 = MSP) on half the calibration images (issue 14) and never T_v; the
    threshold uses the other half; the choice and every candidate's evidence are in the record."""
    create_with_support(client)
    before = client.get("/v1/label-sets/colours").json()
    body = _calibrate(
        client, "colours", n=120, rule="target_coverage", target_coverage="0.8", tune="true", score="trustvlm"
    )
    assert body["visual_temperature"] == before["visual_temperature"] == 0.01
    cal = body["calibration"]
    assert cal["visual_temperature"] == 0.01 and cal["n_tuning"] == 60 and cal["n"] == 60
    chosen = cal["selection"]
    assert chosen["evidence"] == "calibration" and chosen["policy"] == body["preprocess"] == "crop"
    rule = chosen["selection"]
    assert rule["candidates"][0]["name"] == "msp" and len(rule["candidates"]) == 6 and rule["n"] == 60
    assert body["alpha"] == cal["alpha"] == chosen["alpha"] == rule["alpha"]
    got = client.get("/v1/label-sets/colours").json()
    assert got["selection"]["evidence"] == "calibration" and got["alpha"] == body["alpha"]
    star = _calibrate(
        client,
        "colours",
        n=120,
        rule="target_coverage",
        target_coverage="0.8",
        tune="true",
        score="trustvlm_star",
    )
    assert star["visual_temperature"] == 0.01 and star["calibration"]["selection"]["selection"]["score"] == (
        "trustvlm_star"
    )


def test_large_label_sets_are_calibrated_on_the_score_classify_serves(client) -> None:  # type: ignore[no-untyped-def]
    """1,100 classes (above the exact-softmax limit): classify's decisions on the calibration images
    accept exactly the calibration's share of them."""
    colours = list(COLOURS)
    labels = [f"class {i}" for i in range(1100)]
    r = client.post("/v1/label-sets", json={"id": "many", "labels": labels, "trust_score": "trustvlm_star"})
    assert r.status_code == 201, r.text
    for start in range(0, len(labels), 64):
        chunk = labels[start : start + 64]
        images = [png(colour_image(colours[i % 4], seed=i)) for i in range(start, start + len(chunk))]
        assert upload(client, "many", chunk, images).status_code == 200
    # calibration images of the first 8 classes (in batches of 8: the same model batches as classify's)
    cal_labels = [labels[i % 8] for i in range(128)]
    cal_images = [png(colour_image(colours[i % 4], seed=5000 + i)) for i in range(128)]
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(cal_images)]
    data = {"labels": json.dumps(cal_labels), "rule": "target_coverage", "target_coverage": "0.5"}
    r = client.post("/v1/label-sets/many/calibrate", files=files, data=data)
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    accepted = 0
    for start in range(0, 128, 64):
        answer = _classify(client, "many", cal_images[start : start + 64])
        accepted += sum(result["decision"]["accept"] is True for result in answer["results"])
    assert accepted == round(cal["coverage"] * cal["n"])


def test_policy_alpha_and_evidence_in_get_and_classify(client) -> None:  # type: ignore[no-untyped-def]
    """issue 14: a label set's aspect policy, α and how they were chosen, in GET and in every answer."""
    r = client.post(
        "/v1/label-sets",
        json={"id": "boxed", "labels": LABELS, "preprocess": "letterbox", "selection_mode": "auto"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["preprocess"] == r.json()["policy"] == "letterbox"
    labels = [label for label in LABELS for _ in range(8)]
    r = upload(client, "boxed", labels, [png(colour_image(label, i)) for i, label in enumerate(labels)])
    assert r.status_code == 200, r.text
    got = client.get("/v1/label-sets/boxed").json()
    assert got["selection_mode"] == "auto" and got["selection"]["evidence"] == "support-loo"
    assert got["selection"]["selection"]["candidates"] or got["selection"]["selection"]["fallback"]
    trust = _classify(client, "boxed", [png(colour_image("red", 990))])["results"][0]["trust"]
    assert trust["preprocess"] == "letterbox" and trust["selection_evidence"] == "support-loo"
    assert trust["alpha"] == got["alpha"]
    r = client.patch("/v1/label-sets/boxed", json={"alpha": 1.5})  # the user's α wins
    assert r.status_code == 200 and r.json()["selection_mode"] == "fixed" and r.json()["selection"] is None
    trust = _classify(client, "boxed", [png(colour_image("red", 991))])["results"][0]["trust"]
    assert trust["alpha"] == 1.5 and trust["selection_evidence"] == "fixed"
    adhoc = client.post(
        "/v1/classify", files=[("image", ("x.png", png(colour_image("red", 3)), "image/png"))],
        data={"labels": json.dumps(LABELS)},
    ).json()["results"][0]["trust"]  # fmt: skip
    assert adhoc["preprocess"] == "crop" and adhoc["alpha"] is None and adhoc["selection_evidence"] is None
