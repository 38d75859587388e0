"""The live window and the monitor's bounds (count, age, label sets) and numbers."""

from __future__ import annotations

import numpy as np
import pytest

from app.trust.monitoring import (
    LiveWindow,
    MonitorSettings,
    TrustMonitor,
    fit_monitor_reference,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reference(seed: int = 0):
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 2, 2000)
    correct = rng.random(2000) < conf
    return fit_monitor_reference(conf, correct, conf >= 0.5, "msp"), rng


def test_reference_holds_a_bounded_sketch_and_the_calibration_numbers() -> None:
    ref, _ = _reference()
    assert len(ref.quantiles) == 256 and ref.n == 2000
    assert 0.6 < ref.calibration_accuracy < 0.8 and 0.8 < ref.calibration_coverage < 0.95
    assert ref.model_validate_json(ref.model_dump_json()) == ref  # stored as JSON in the label set


def test_window_is_a_ring_with_an_age_limit() -> None:
    w = LiveWindow(4)
    w.add(1.0, np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]))
    w.add(2.0, np.array([4.0, 5.0]), np.array([0, 0]))
    _, scores, _ = w.recent(2.0, 10.0)
    assert sorted(scores.tolist()) == [2.0, 3.0, 4.0, 5.0]  # oldest dropped
    _, scores, _ = w.recent(2.0, 0.5)
    assert sorted(scores.tolist()) == [4.0, 5.0]  # older than 0.5 s dropped
    w.add(3.0, np.arange(10.0), np.ones(10))  # more than the capacity at once: keep the last 4
    assert sorted(w.recent(3.0, 10.0)[1].tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_snapshot_numbers_in_and_out_of_distribution() -> None:
    ref, rng = _reference()
    clock = Clock()
    monitor = TrustMonitor(MonitorSettings(window_size=500, window_seconds=60, min_samples=100), clock)
    kwargs = dict(model="m", version=3, identity="cal-1", reference=ref)
    conf = rng.beta(5, 2, 80)
    monitor.observe("a", scores=conf, accepted=conf >= 0.5, **kwargs)
    early = monitor.snapshot("a")
    assert early is not None and early.samples == 80 and not early.enough and np.isnan(early.psi)
    conf = rng.beta(5, 2, 400)
    monitor.observe("a", scores=conf, accepted=conf >= 0.5, **kwargs)
    snap = monitor.snapshot("a")
    assert snap.samples == 480 and snap.enough and snap.psi < 0.1 and snap.ks < 0.1
    assert abs(snap.estimated_accuracy - ref.calibration_accuracy) < 0.06
    assert abs(snap.acceptance_rate - ref.calibration_coverage) < 0.06
    clock.now += 120  # everything ages out of the time window
    shifted = rng.beta(2, 3, 200)
    monitor.observe("a", scores=shifted, accepted=shifted >= 0.5, **kwargs)
    snap = monitor.snapshot("a")
    assert snap.samples == 200 and snap.window_start == snap.window_end == clock.now
    assert snap.psi > 0.25 and snap.ks > 0.3
    assert snap.estimated_accuracy < ref.calibration_accuracy - 0.2
    assert snap.acceptance_rate < ref.calibration_coverage / 2


def test_a_new_calibration_starts_a_new_window_and_label_sets_are_bounded() -> None:
    ref, _ = _reference()
    monitor = TrustMonitor(MonitorSettings(window_size=10, max_label_sets=2, min_samples=1))
    one = dict(model="m", version=1, reference=ref, scores=np.ones(3), accepted=np.ones(3))
    monitor.observe("a", identity="cal-1", **one)
    monitor.observe("a", identity="cal-2", **one)
    assert monitor.snapshot("a").samples == 3
    monitor.observe("b", identity="x", **one)
    monitor.observe("a", identity="cal-2", **one)  # a is now the most recent
    monitor.observe("c", identity="x", **one)  # evicts b, the least recently used
    assert monitor.ids() == ["a", "c"] and monitor.snapshot("b") is None
    monitor.forget("a")
    assert monitor.ids() == ["c"]


def test_undefined_scores_count_as_rejections_not_drift() -> None:
    ref, _ = _reference()
    monitor = TrustMonitor(MonitorSettings(min_samples=2))
    scores = np.array([0.9, np.nan, 0.8])
    monitor.observe("a", model="m", version=1, identity="c", reference=ref, scores=scores,
                    accepted=np.array([1, 0, 1]))  # fmt: skip
    snap = monitor.snapshot("a")
    assert snap.undefined_scores == 1 and snap.samples == 3
    assert snap.acceptance_rate == pytest.approx(2 / 3) and np.isfinite(snap.ks)


def test_memory_bound_is_stated() -> None:
    assert MonitorSettings(window_size=1000).bytes_per_label_set() == 1000 * 17 + 256 * 8
