"""app.trust.risk_coverage: the thinned curve keeps the exact values of risk_coverage_curve, and the
operating point of a threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from app.trust.metrics import aurc, risk_coverage_curve
from app.trust.risk_coverage import operating_point, summarise_risk_coverage


def test_a_small_curve_is_kept_whole() -> None:
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 1]
    summary = summarise_risk_coverage(conf, correct, max_points=10)
    assert [(p.coverage, p.risk, p.threshold) for p in summary.points] == [
        (0.25, 0.0, 0.9), (0.5, 0.5, 0.8), (0.75, 1 / 3, 0.7), (1.0, 0.25, 0.6),
    ]  # fmt: skip
    assert summary.n == 4 and summary.accuracy == 0.75 and summary.aurc == pytest.approx(aurc(conf, correct))


def test_a_large_curve_is_thinned_to_exact_points_and_keeps_full_coverage() -> None:
    rng = np.random.default_rng(0)
    conf = rng.random(5000)
    correct = (rng.random(5000) < conf).astype(int)
    full = risk_coverage_curve(conf, correct)
    summary = summarise_risk_coverage(conf, correct, max_points=101)
    assert len(summary.points) == 101
    assert summary.points[0].coverage == full.coverage[0] and summary.points[-1].coverage == 1.0
    for p in summary.points:
        k = round(p.coverage * 5000) - 1
        assert p.risk == full.risk[k] and p.threshold == full.threshold[k]
    coverages = [p.coverage for p in summary.points]
    assert coverages == sorted(coverages) and max(np.diff(coverages)) <= 0.011
    with pytest.raises(ValueError):
        summarise_risk_coverage(conf, correct, max_points=1)


def test_operating_point() -> None:
    conf, correct = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 1])
    point = operating_point(conf, correct, 0.7)
    assert (point.coverage, point.risk, point.accepted) == (0.75, pytest.approx(1 / 3), 3)
    nothing = operating_point(conf, correct, 0.95)
    assert nothing.accepted == 0 and nothing.coverage == 0.0 and nothing.risk is None
