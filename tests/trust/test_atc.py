"""Average Thresholded Confidence (Garg et al., ICLR 2022)."""

from __future__ import annotations

import numpy as np
import pytest

from app.trust.atc import atc_estimate, fit_atc_threshold


def test_threshold_puts_the_error_count_below_it() -> None:
    scores = np.array([0.9, 0.2, 0.7, 0.4, 0.6])
    correct = np.array([1, 0, 1, 0, 1])
    t = fit_atc_threshold(scores, correct)
    assert t == 0.6
    assert atc_estimate(scores, t) == pytest.approx(correct.mean())


def test_estimate_tracks_accuracy_of_a_calibrated_model() -> None:
    """Scores are the probability of being right: ATC recovers held-out accuracy within a few points. Under
    a shift that lowers every confidence it is not exact (ATC assumes the shift keeps the score-accuracy
    relation's shape), but it falls with the accuracy."""
    rng = np.random.default_rng(0)
    conf = rng.beta(5, 2, 4000)
    correct = rng.random(4000) < conf
    t = fit_atc_threshold(conf[:2000], correct[:2000])
    assert abs(atc_estimate(conf[2000:], t) - correct[2000:].mean()) < 0.03
    shifted = rng.beta(2, 2, 2000)
    truth = (rng.random(2000) < shifted).mean()
    in_distribution = atc_estimate(conf[2000:], t)
    assert atc_estimate(shifted, t) < in_distribution - 0.2 and truth < correct[2000:].mean() - 0.1


def test_edge_cases() -> None:
    assert atc_estimate(np.array([0.5, 0.6]), fit_atc_threshold(np.array([0.5, 0.6]), [0, 0])) == 0.0
    assert atc_estimate(np.array([0.5, 0.6]), fit_atc_threshold(np.array([0.5, 0.6]), [1, 1])) == 1.0
    t = fit_atc_threshold(np.array([np.nan, 0.3, 0.8]), [0, 1, 1])  # NaN counts as the lowest score
    assert t == 0.3 and atc_estimate(np.array([np.nan, 0.5]), t) == 0.5
    assert np.isnan(atc_estimate(np.array([]), 0.5))
    with pytest.raises(ValueError):
        fit_atc_threshold(np.array([0.1, 0.2]), [1])
