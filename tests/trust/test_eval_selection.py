"""The evaluation's self-selected rows (support leave-one-out and calibration evidence, per image space) and
the paired bootstrap intervals against MSP."""

from __future__ import annotations

import numpy as np
import pytest

from app.trust.eval_selection import intervals_against, row_name, selected_rows, space_sets
from app.trust.metrics import auroc, eaurc
from app.trust.scores import l2_normalize, msp
from app.trust.selection import Candidate


def labelled(n: int, rng: np.random.Generator, centres: np.ndarray, noise: np.ndarray, informative: float):
    c = centres.shape[0]
    labels = np.repeat(np.arange(c), n // c)
    logits = 1.6 * rng.normal(size=(labels.size, c)) + 1.5 * np.eye(c)[labels]
    good = informative * centres[labels] + 0.5 * rng.normal(size=(labels.size, centres.shape[1]))
    bad = rng.normal(size=(labels.size, noise.shape[1]))
    return logits, labels, {"own": bad, "lite0": good}


def test_space_sets_and_row_names() -> None:
    assert space_sets(["own"]) == [("own",)]
    assert space_sets(["own", "lite0"]) == [("own",), ("lite0",), ("own", "lite0")]
    assert row_name("trustvlm", "auto", ("own",), ["own", "lite0"]) == "trustvlm (auto: own)"
    assert row_name("trustvlm", "tuned", ("own", "lite0"), ["own", "lite0"]) == "trustvlm (tuned)"


def test_selected_rows_pick_the_informative_space_on_both_kinds_of_evidence() -> None:
    rng = np.random.default_rng(0)
    centres, noise = l2_normalize(rng.normal(size=(5, 12))), np.zeros((1, 12))
    support = labelled(100, rng, centres, noise, 1.5)
    calibration = labelled(300, rng, centres, noise, 1.5)
    test_logits, test_labels, test_spaces = labelled(400, rng, centres, noise, 1.5)
    rows, records = selected_rows(
        test_logits=test_logits, test_spaces=test_spaces, support=support, calibration=calibration,
        num_classes=5, spaces=["own", "lite0"], default=Candidate(2.0, "own"),
        visual_temperature=0.01, temperature=1.0, seed=0, replicates=100,
    )  # fmt: skip
    expected = {
        f"{score} ({kind}{spaces})"
        for kind in ("auto", "tuned")
        for score, spaces in [
            ("trustvlm", ": own"),
            ("trustvlm", ": lite0"),
            ("trustvlm", ""),
            ("trustvlm_star", ""),
        ]
    }
    assert set(rows) == expected == set(records)
    for kind in ("auto", "tuned"):
        assert records[f"trustvlm ({kind})"]["space"] == "lite0"
        assert records[f"trustvlm ({kind}: own)"]["chosen"] == "msp"  # pure noise: stay with MSP
    assert records["trustvlm (auto)"]["evidence"] == "support-loo"
    assert records["trustvlm (tuned)"]["evidence"] == "calibration"
    conf, judged = rows["trustvlm (auto: own)"]
    np.testing.assert_allclose(conf, msp(test_logits))
    correct = judged == test_labels
    assert auroc(rows["trustvlm (tuned)"][0], correct) > auroc(msp(test_logits), correct) + 0.05


def test_intervals_against_msp() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.6, labels, (labels + 1) % 3)
    correct = pred == labels
    base = rng.random(300)
    better = base + 0.8 * correct
    draws_conf = [{"msp": base, "better": better, "nan": np.full(300, np.nan)}] * 2
    draws_pred = [{"msp": pred, "better": pred, "nan": pred}] * 2
    out = intervals_against(draws_conf, draws_pred, labels, replicates=300, seed=0)
    assert "nan" not in out and out["msp"]["delta_auroc"] == [0.0, 0.0, 0.0]
    point, lo, hi = out["better"]["delta_auroc"]
    assert point == pytest.approx(auroc(better, correct) - auroc(base, correct))
    assert lo < point < hi and lo > 0
    ratio = out["better"]["eaurc_ratio"]
    assert ratio[0] == pytest.approx(eaurc(better, correct) / eaurc(base, correct)) and ratio[2] < 1
