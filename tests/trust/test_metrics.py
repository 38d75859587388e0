"""Tests for app.trust.metrics: the golden cases of metrics.md and cross-checks against scikit-learn."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from app.trust import metrics as m

# fmt: off
CASE1_S = [0.99, 0.97, 0.93, 0.91, 0.88, 0.84, 0.79, 0.75, 0.71, 0.66,
           0.62, 0.55, 0.51, 0.47, 0.42, 0.38, 0.33, 0.29, 0.24, 0.20]
CASE1_C = [1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 0]
CASE2_S = [0.95, 0.90, 0.90, 0.80, 0.70, 0.65, 0.60, 0.50, 0.40, 0.30]
CASE2_C = [1, 1, 0, 1, 1, 0, 1, 0, 1, 0]
# fmt: on


@pytest.mark.parametrize(
    ("s", "c", "expected"),
    [
        (
            CASE1_S,
            CASE1_C,
            {"aurc": 171.576849, "eaurc": 121.249310, "auroc": 73.809524, "fpr95": 50.0, "accuracy": 70.0},
        ),
        (
            CASE2_S,
            CASE2_C,
            {"aurc": 251.071429, "eaurc": 157.566803, "auroc": 68.75, "fpr95": 75.0, "accuracy": 60.0},
        ),
    ],
)
def test_golden_failure_detection_cases(s: list[float], c: list[int], expected: dict[str, float]) -> None:
    report = m.failure_detection_report(s, c)
    for metric, value in expected.items():
        assert m.to_paper_units(metric, report[metric]) == pytest.approx(value, abs=1e-6), metric


def test_ties_keep_input_order() -> None:
    # Swapping the tied pair (error first) must change AURC: the stable sort is part of the definition.
    swapped_s = [0.95, 0.90, 0.90, *CASE2_S[3:]]
    swapped_c = [1, 0, 1, *CASE2_C[3:]]
    assert m.aurc(swapped_s, swapped_c) > m.aurc(CASE2_S, CASE2_C)
    assert m.auroc(swapped_s, swapped_c) == pytest.approx(m.auroc(CASE2_S, CASE2_C))


def test_golden_ood_case() -> None:
    id_conf = [0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4]
    ood_conf = [0.82, 0.65, 0.5, 0.35, 0.3, 0.2, 0.15, 0.1, 0.05, 0.01]
    assert m.ood_auroc(id_conf, ood_conf) * 100 == pytest.approx(84.5, abs=1e-6)
    assert m.ood_fpr95_ood_positive(id_conf, ood_conf) * 100 == pytest.approx(80.0, abs=1e-6)
    assert m.ood_fpr95_id_positive(id_conf, ood_conf) * 100 == pytest.approx(30.0, abs=1e-6)


def test_eaurc_edge_cases() -> None:
    s = [0.9, 0.5, 0.1]
    assert m.eaurc(s, [1, 1, 1]) == m.aurc(s, [1, 1, 1]) == 0.0
    assert m.eaurc(s, [0, 0, 0]) is None
    assert m.auroc(s, [1, 1, 1]) is None and m.fpr_at_95_tpr(s, [0, 0, 0]) is None
    # a perfect ranking beats the reversed one
    assert m.eaurc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) < m.eaurc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])
    assert m.aurc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        m.aurc([0.1, 0.2], [1])
    with pytest.raises(ValueError):
        m.aurc([], [])
    with pytest.raises(ValueError):
        m.aurc([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError):
        m.aurc([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError):
        m.expected_calibration_error([1.5], [1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 300), ties=st.booleans())
def test_cross_check_with_sklearn_and_brute_force(seed: int, n: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    if ties:
        s = np.round(s, 1)
    c = (rng.random(n) < s).astype(int)
    if 0 < c.sum() < n:
        assert m.auroc(s, c) == pytest.approx(roc_auc_score(c, s), abs=1e-12)
        assert m.aupr_success(s, c) == pytest.approx(average_precision_score(c, s), abs=1e-12)
        assert m.aupr_error(s, c) == pytest.approx(average_precision_score(1 - c, -s), abs=1e-12)
        fpr, tpr, _ = roc_curve(c, s)
        assert m.fpr_at_95_tpr(s, c) == fpr[np.argmin(np.abs(tpr - 0.95))]
    # AURC by brute force, one coverage level at a time
    order = sorted(range(n), key=lambda i: -s[i])  # Python's sort is stable
    risks = [sum(1 - c[j] for j in order[:k]) / k for k in range(1, n + 1)]
    assert m.aurc(s, c) == pytest.approx(sum(risks) / n, abs=1e-12)
    r = 1 - c.mean()
    if r < 1:
        expected = sum(risks) / n - (r + (1 - r) * math.log(1 - r) if r > 0 else 0.0)
        assert m.eaurc(s, c) == pytest.approx(expected, abs=1e-12)
        assert m.eaurc(s, c) >= -1e-12


def test_ece_matches_loop_definition() -> None:
    rng = np.random.default_rng(3)
    s = rng.random(500)
    s[:3] = [0.0, 1.0, 1 / 15]  # edges: 0 -> first bin, 1 -> last bin, 1/15 -> first bin (lo, hi]
    c = (rng.random(500) < s).astype(int)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        in_bin = (s > lo) & (s <= hi) if b else (s <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(c[in_bin].mean() - s[in_bin].mean())
    assert m.expected_calibration_error(s, c) == pytest.approx(total, abs=1e-12)
    assert m.expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0


def test_risk_coverage_helpers() -> None:
    curve = m.risk_coverage_curve(CASE1_S, CASE1_C)
    assert curve.coverage[-1] == 1.0 and curve.risk[-1] == pytest.approx(0.3)
    assert list(curve.threshold) == sorted(CASE1_S, reverse=True)
    assert m.risk_at_coverage(CASE1_S, CASE1_C, 0.2) == pytest.approx(1 / 4)  # top 4 hold one error
    assert m.risk_at_coverage(CASE1_S, CASE1_C, 1.0) == pytest.approx(0.3)
    assert m.coverage_at_risk(CASE1_S, CASE1_C, 0.0) == pytest.approx(3 / 20)
    assert m.coverage_at_risk(CASE1_S, CASE1_C, 0.3) == 1.0
    assert m.coverage_at_risk([0.9], [0], 0.1) == 0.0


def test_table_uses_paper_units() -> None:
    report = m.failure_detection_report(CASE1_S, CASE1_C, probabilities=True)
    table = m.format_metrics_table({"msp": report}, stds={"msp": {"aurc": 0.001}}, metrics=("aurc", "auroc"))
    assert "171.58 ± 1.00" in table and "73.81" in table
    undefined = m.format_metrics_table({"x": {"eaurc": None}}, metrics=("eaurc",))
    assert "n/a" in undefined
