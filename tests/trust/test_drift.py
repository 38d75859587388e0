"""PSI and KS between live scores and a calibration sketch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from app.trust.drift import ks_statistic, psi, reference_quantiles


def test_reference_sketch_is_bounded_and_close() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20_000)
    ref = reference_quantiles(scores)
    assert ref.size == 256 and np.all(np.diff(ref) >= 0)
    assert ks_statistic(scores, ref) <= 1 / 256 + 1e-3  # the sketch's CDF is within 1/(2m) + ties
    assert reference_quantiles(np.array([3.0, np.nan, 1.0])).tolist() == [1.0, 3.0]
    with pytest.raises(ValueError):
        reference_quantiles(np.array([np.nan]))


def test_same_distribution_is_stable_and_a_shift_is_not() -> None:
    rng = np.random.default_rng(1)
    ref = reference_quantiles(rng.normal(size=5000))
    same = rng.normal(size=500)
    shifted = rng.normal(loc=1.0, size=500)
    assert psi(same, ref) < 0.1 and ks_statistic(same, ref) < 0.1
    assert psi(shifted, ref) > 0.25 and ks_statistic(shifted, ref) > 0.3


def test_psi_by_hand_and_ties() -> None:
    ref = np.arange(10.0)  # deciles cut between every value: each bin holds 0.1
    live = np.zeros(10)  # everything in the first bin
    expected = (1 - 0.1) * np.log(1 / 0.1) + 9 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert psi(live, ref) == pytest.approx(expected)
    assert psi(np.ones(50), np.ones(100)) == pytest.approx(0.0)  # all tied: one bin, no drift
    assert np.isnan(psi(np.array([]), ref)) and np.isnan(ks_statistic(ref, np.array([])))


def test_ks_matches_scipy_including_ties() -> None:
    rng = np.random.default_rng(2)
    for a, b in (
        (rng.normal(size=300), rng.normal(0.3, size=256)),
        (np.round(rng.normal(size=200), 1), np.round(rng.normal(size=100), 1)),  # many ties
        (np.ones(5), np.ones(7)),
    ):
        assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
