"""Split-conformal prediction sets: the corrected quantile, both scores, set order, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.trust.conformal import (
    ConformalError,
    conformal_quantile,
    corrected_quantile_level,
    fit_conformal,
    nonconformity,
    prediction_sets,
    threshold_sets,
)


def _probs(rng: np.random.Generator, n: int, c: int, sharp: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax rows from which labels are drawn (so the model is calibrated and coverage is testable)."""
    z = rng.normal(size=(n, c)) * sharp
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])
    return p, y


@pytest.mark.parametrize(("n", "eps", "level"), [(9, 0.1, 1.0), (19, 0.1, 18 / 19), (99, 0.1, 90 / 99)])
def test_corrected_quantile_level(n: int, eps: float, level: float) -> None:
    assert corrected_quantile_level(n, eps) == pytest.approx(level)
    assert corrected_quantile_level(n, eps) == math.ceil((n + 1) * (1 - eps)) / n


def test_conformal_quantile_is_the_ceil_rank_order_statistic() -> None:
    scores = np.arange(1, 20, dtype=float)[::-1]  # 19 scores 1..19, unsorted
    assert conformal_quantile(scores, 0.1) == 18.0  # rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.5) == 10.0  # rank ceil(20 * 0.5) = 10
    assert conformal_quantile(np.arange(5.0), 0.1) == math.inf  # rank ceil(6 * 0.9) = 6 > 5


def test_too_few_images_give_every_label() -> None:
    p = np.array([[0.7, 0.2, 0.1]] * 5)
    fitted = fit_conformal(p, np.zeros(5, int), 0.1, "lac")
    assert fitted.threshold == 1.0
    assert [s.tolist() for s in prediction_sets(p, fitted.threshold, "lac")] == [[0, 1, 2]] * 5


def test_scores_by_hand() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    y = np.array([1, 2])
    np.testing.assert_allclose(nonconformity(p, y, "lac"), [0.7, 0.7])
    np.testing.assert_allclose(nonconformity(p, y, "aps"), [0.5, 0.6])


def test_sets_are_ordered_prefixes() -> None:
    p = np.array([[0.2, 0.5, 0.3], [0.05, 0.15, 0.8]])
    lac = prediction_sets(p, 0.75, "lac")  # p >= 0.25
    assert [s.tolist() for s in lac] == [[1, 2], [2]]
    aps = prediction_sets(p, 0.6, "aps")  # labels while the mass before them is <= 0.6
    assert [s.tolist() for s in aps] == [[1, 2], [2]]
    assert [s.tolist() for s in threshold_sets(p, 0.25)] == [[1, 2], [2]]


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_coverage_over_draws(method: str) -> None:
    """Mean coverage over 30 calibration draws is within 1 − ε ± 3 standard errors, never far below."""
    rng = np.random.default_rng(0)
    eps, n, m = 0.1, 200, 500
    coverages = []
    for _ in range(30):
        p_cal, y_cal = _probs(rng, n, 8)
        p_test, y_test = _probs(rng, m, 8)
        fitted = fit_conformal(p_cal, y_cal, eps, method)  # type: ignore[arg-type]
        sets = prediction_sets(p_test, fitted.threshold, method)  # type: ignore[arg-type]
        coverages.append(np.mean([y in s for y, s in zip(y_test, sets)]))
    sd = math.sqrt(eps * (1 - eps) * (1 / (n + 2) + 1 / m))
    assert np.mean(coverages) >= 1 - eps - 3 * sd / math.sqrt(30)
    assert np.mean(coverages) <= 1 - eps + 1 / (n + 1) + 3 * sd / math.sqrt(30)


def test_lac_sets_are_smaller_than_aps_on_average() -> None:
    rng = np.random.default_rng(1)
    p, y = _probs(rng, 400, 10)
    lac, aps = fit_conformal(p, y, 0.1, "lac"), fit_conformal(p, y, 0.1, "aps")
    assert lac.mean_set_size <= aps.mean_set_size
    assert lac.calibration_coverage >= 0.9 and aps.calibration_coverage >= 0.9
    assert "≥ 0.9" in lac.guarantee and lac.probabilities == "softmax"


@pytest.mark.parametrize(
    ("probs", "labels", "eps"),
    [
        (np.ones((3, 2)) / 2, np.array([0, 1, 2]), 0.1),  # label out of range
        (np.ones((3, 2)) / 2, np.array([0, 1]), 0.1),  # one label short
        (np.ones((3, 2)) / 2, np.array([0, 1, 1]), 0.0),  # epsilon 0
        (np.full((3, 2), np.nan), np.array([0, 1, 1]), 0.1),  # NaN probabilities
    ],
)
def test_bad_arguments(probs: np.ndarray, labels: np.ndarray, eps: float) -> None:
    with pytest.raises(ConformalError):
        fit_conformal(probs, labels, eps)


def test_guarantee_says_when_a_selection_saw_the_same_images() -> None:
    """A selection among M > 1 candidates on the calibration images makes the stated bound approximate."""
    from app.trust.conformal import guarantee_text

    exact = guarantee_text(0.1, 500)
    assert "≥ 0.9" in exact and "approximate" not in exact
    selected = guarantee_text(0.1, 500, selected_among=24)
    assert selected.startswith(exact) and "selected among 24 candidates" in selected


def test_guarantee_after_a_selection_on_disjoint_images_is_exact() -> None:
    """Settings selected on images disjoint from the conformal ones: the stated bound holds, and says so."""
    from app.trust.conformal import guarantee_text

    text = guarantee_text(0.1, 250, selected_among=24, selection_images=250)
    assert "approximate" not in text and "250 other calibration images, disjoint" in text
