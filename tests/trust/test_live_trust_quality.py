"""The issue's quality bars on the embedded offline model (slow: encodes ~7,000 images on a fresh cache).

Runs ``benchmarks/trust_monitoring/quality.py`` (3 support + calibration draws per data set, n = 1,000
calibration and m = 2,000 held-out images each) and checks: conformal coverage at ε = 0.1 is ≥ 0.9 minus
the finite-sample slack on every draw, for Fashion-MNIST and Animal-MNIST; the ATC estimate of a held-out
Fashion-MNIST window is within 5 points of its true accuracy; a shifted window (the other data set's
images) is flagged by drift and a lower estimate.
"""

from __future__ import annotations

import pytest

from benchmarks.trust_monitoring.quality import EPSILON, run


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_conformal_coverage_atc_and_drift_on_the_offline_model() -> None:
    result = run()
    for dataset in ("fashion-mnist", "animal-mnist"):
        summary = result[dataset]
        slack = summary["finite_sample_slack_per_draw"]
        assert len(summary["draws"]) >= 3
        for draw in summary["draws"]:
            for method in ("lac_trustvlm_star", "aps_trustvlm_star"):
                assert draw[method]["coverage"] >= 1 - EPSILON - slack, (dataset, method, draw[method])
            # TrustVLM*'s probabilities give much smaller sets than the plain softmax at the same ε
            assert draw["lac_trustvlm_star"]["mean_set_size"] < draw["lac_softmax"]["mean_set_size"]
            window, shifted = draw["atc"]["window"], draw["atc"]["shifted_window"]
            if dataset == "fashion-mnist":
                assert abs(window["estimated"] - window["true"]) <= 0.05, draw["atc"]
                assert abs(draw["atc"]["held_out"]["estimated"] - draw["atc"]["held_out"]["true"]) <= 0.05
            assert shifted["estimated"] < window["estimated"] - 0.3
            assert draw["drift"]["window"]["psi"] < 0.1 < 0.25 < draw["drift"]["shifted_window"]["psi"]
