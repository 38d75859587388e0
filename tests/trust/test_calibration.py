"""Tests for app.trust.calibration: coverage rule, SGR risk guarantee, minimum size, α/T_v tuning."""

import math

import numpy as np
import pytest

from app.trust.calibration import (
    CalibrationError,
    calibrate_target_coverage,
    calibrate_target_risk,
    clopper_pearson_upper,
    min_calibration_size,
    sgr_search_steps,
    tune_trustvlm,
)
from app.trust.scores import l2_normalize


def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """s ~ U(0, 1) and P(error | s) = 0.4 · (1 − s): the true selective risk is known in closed form."""
    s = rng.random(n)
    correct = (rng.random(n) >= 0.4 * (1 - s)).astype(int)
    return s, correct


def true_selective_risk(threshold: float) -> float:
    # E[0.4 (1 − s) | s ≥ τ] = 0.2 (1 − τ)
    return 0.2 * (1 - threshold)


def test_sgr_guarantee_holds_in_repeated_draws() -> None:
    rng = np.random.default_rng(0)
    target, delta, trials = 0.15, 0.1, 200
    violations, coverages = 0, []
    for _ in range(trials):
        result = calibrate_target_risk(*draw(2000, rng), target_risk=target, delta=delta)
        assert result.risk_upper_bound is not None and result.risk_upper_bound <= target
        violations += true_selective_risk(result.threshold) > target
        coverages.append(result.coverage)
    assert violations <= delta * trials
    # and it is not vacuous: the best possible coverage is 1 − τ* = 0.75
    assert 0.4 < np.mean(coverages) <= 0.75


def test_sgr_result_fields_are_consistent() -> None:
    s, c = draw(2000, np.random.default_rng(1))
    r = calibrate_target_risk(s, c, target_risk=0.1, delta=0.05)
    accepted = s >= r.threshold
    assert r.rule == "target_risk" and r.n == 2000 and r.n_accepted == accepted.sum()
    assert r.coverage == pytest.approx(accepted.mean())
    assert r.risk == pytest.approx(1 - c[accepted].mean())
    level = 0.05 / sgr_search_steps(2000)
    assert r.risk_upper_bound == pytest.approx(
        clopper_pearson_upper(int((1 - c[accepted]).sum()), r.n_accepted, level)
    )
    assert "0.95" in r.guarantee and "SGR" in r.guarantee
    np.testing.assert_array_equal(r.accepts(s), accepted)


def test_clopper_pearson_zero_errors_closed_form() -> None:
    assert clopper_pearson_upper(0, 50, 0.05) == pytest.approx(1 - 0.05 ** (1 / 50))
    assert clopper_pearson_upper(5, 5, 0.05) == 1.0
    assert clopper_pearson_upper(0, 0, 0.05) == 1.0


def test_minimum_calibration_size_is_tight() -> None:
    target, delta = 0.05, 0.05
    n = min_calibration_size(target, delta)
    assert 1 - (delta / sgr_search_steps(n)) ** (1 / n) <= target
    assert 1 - (delta / sgr_search_steps(n - 1)) ** (1 / (n - 1)) > target
    # SGR's binary search starts at half coverage, so a perfect set of 4n samples certifies ≥ half of it
    perfect = calibrate_target_risk(np.linspace(0, 1, 4 * n), np.ones(4 * n, dtype=int), target, delta)
    assert perfect.coverage >= 0.5 and perfect.risk == 0.0
    with pytest.raises(CalibrationError) as info:
        calibrate_target_risk(np.linspace(0, 1, n - 1), np.ones(n - 1, dtype=int), target, delta)
    assert info.value.min_samples == n and str(n) in str(info.value)


def test_impossible_target_refuses_instead_of_guessing() -> None:
    s, c = draw(500, np.random.default_rng(2))
    c[np.argsort(-s)[:5]] = 0  # the most confident predictions are wrong
    with pytest.raises(CalibrationError):
        calibrate_target_risk(s, c, target_risk=0.01, delta=0.05)
    with pytest.raises(ValueError):
        calibrate_target_risk(s, c, target_risk=0.0)
    with pytest.raises(ValueError):
        calibrate_target_risk(s, c, target_risk=0.1, delta=1.0)
    with pytest.raises(CalibrationError):
        calibrate_target_risk([], [], target_risk=0.1)


def test_target_coverage_picks_the_highest_threshold_reaching_it() -> None:
    s = np.array([0.9, 0.8, 0.8, 0.5, 0.1])
    c = np.array([1, 1, 0, 1, 0])
    r = calibrate_target_coverage(s, c, 0.4)
    # the two samples tied at 0.8 are accepted together
    assert r.threshold == 0.8 and r.coverage == 0.6 and r.risk == pytest.approx(1 / 3)
    assert calibrate_target_coverage(s, c, 0.2).threshold == 0.9
    assert calibrate_target_coverage(s, c, 1.0).coverage == 1.0
    assert r.risk_upper_bound is None and "No guarantee on the error rate" in r.guarantee
    with pytest.raises(ValueError):
        calibrate_target_coverage(s, c, 0.0)


def test_coverage_rule_generalises_in_expectation() -> None:
    rng = np.random.default_rng(4)
    coverages = []
    for _ in range(200):
        r = calibrate_target_coverage(*draw(200, rng), target_coverage=0.7)
        coverages.append(1 - r.threshold)  # true coverage of s ~ U(0, 1)
    assert np.mean(coverages) >= math.ceil(0.7 * 200) / 201 - 0.01


def test_tune_trustvlm_prefers_informative_image_space() -> None:
    rng = np.random.default_rng(5)
    n, c, f = 400, 4, 8
    labels = rng.integers(0, c, n)
    protos = l2_normalize(rng.normal(size=(c, f)))
    feats = protos[labels] + 0.3 * rng.normal(size=(n, f))  # the image space knows the label
    logits = rng.normal(size=(n, c))  # the text side is noise
    result = tune_trustvlm(logits, feats, protos, np.ones(c, dtype=bool), labels, alphas=(0.0, 1.0))
    assert result.alpha == 1.0 and len(result.grid) == 2
    star = tune_trustvlm(
        logits,
        feats,
        protos,
        np.ones(c, dtype=bool),
        labels,
        alphas=(0.0, 1.0),
        visual_temperatures=(0.01, 0.1),
        score="trustvlm_star",
    )
    assert len(star.grid) == 4 and star.alpha == 1.0
