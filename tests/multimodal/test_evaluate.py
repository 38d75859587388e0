"""Evaluation helpers: score reports, aggregation, tables, synthesis timing."""

import numpy as np
import pytest

from app.multimodal.evaluate import Aggregate, aggregate, markdown_table, score_reports, time_synthesis


def test_score_reports_cover_every_score_and_ece_for_msp_only() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 1.0], [2.0, 1.9], [0.0, 4.0]])
    labels = np.array([0, 1, 1, 1])  # third prediction is wrong and the least confident
    reports = score_reports(logits, labels)
    assert set(reports) >= {"msp", "energy", "max_logit", "neg_entropy", "doctor_alpha", "softmax_variance"}
    assert reports["msp"]["accuracy"] == 0.75 and "ece" in reports["msp"] and "ece" not in reports["energy"]
    assert reports["msp"]["auroc"] == 1.0 and reports["msp"]["aurc"] == pytest.approx((0 + 0 + 0 + 0.25) / 4)


def test_aggregate_mean_and_sample_std() -> None:
    agg = aggregate([0.1, 0.2, None, 0.3])
    assert agg.n == 3 and agg.mean == pytest.approx(0.2) and agg.std == pytest.approx(0.1)
    assert aggregate([None]).mean is None


def test_markdown_table_uses_paper_units() -> None:
    table = markdown_table(
        {"ACR": {"aurc": Aggregate(0.0123, 0.001, 3), "auroc": Aggregate(0.9, 0.01, 3)}},
        metrics=("aurc", "auroc"),
    )
    assert "| ACR | 12.30 ± 1.00 | 90.00 ± 1.00 |" in table and "AURC ↓" in table


def test_time_synthesis_reports_each_method() -> None:
    timings = time_synthesis((32, 16), steps=2, n_range=(2, 8), mix_dims=4, bank_size=8)
    assert set(timings) == {"mfs", "feature_mixing", "np_mix_knn"} and all(v > 0 for v in timings.values())
