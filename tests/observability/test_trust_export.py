"""Trust gauges in the exposition: values, the series cap with its aggregate, removal."""

from __future__ import annotations

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import ServiceMetrics
from app.observability.trust import AGGREGATE_LABEL_SET, TrustExporter
from app.trust.monitoring import MonitorSettings, TrustMonitor, fit_monitor_reference


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, str, str], float]:
    """(family, label_set, statistic) -> value for the trust gauges in /metrics."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.startswith("trustserve_trust_"):
            for s in family.samples:
                out[(s.name, s.labels.get("label_set", ""), s.labels.get("statistic", ""))] = s.value
    return out


def _setup(max_series: int = 2) -> tuple[ServiceMetrics, TrustMonitor, object]:
    rng = np.random.default_rng(0)
    conf = rng.beta(5, 2, 1000)
    ref = fit_monitor_reference(conf, rng.random(1000) < conf, conf >= 0.5, "msp")
    metrics = ServiceMetrics()
    monitor = TrustMonitor(MonitorSettings(min_samples=50))
    metrics.before_render(TrustExporter(metrics, monitor, max_series).export)

    def observe(label_set: str, scores: np.ndarray) -> None:
        monitor.observe(label_set, model="m", version=1, identity="c", reference=ref, scores=scores,
                        accepted=scores >= 0.5)  # fmt: skip

    return metrics, monitor, (observe, rng)


def test_gauges_follow_the_monitor_and_leave_with_it() -> None:
    metrics, monitor, (observe, rng) = _setup()
    assert not any(k for k in _samples(metrics) if k[1])  # nothing monitored yet
    observe("a", rng.beta(5, 2, 200))
    got = _samples(metrics)
    assert got[("trustserve_trust_window_samples", "a", "")] == 200
    assert got[("trustserve_trust_drift", "a", "psi")] < 0.1
    assert 0.6 < got[("trustserve_trust_estimated_accuracy_ratio", "a", "")] < 0.8
    assert got[("trustserve_trust_monitored_label_sets", "", "")] == 1
    monitor.forget("a")
    assert not [k for k in _samples(metrics) if k[1] == "a"]


def test_label_sets_beyond_the_cap_are_aggregated() -> None:
    metrics, monitor, (observe, rng) = _setup(max_series=2)
    observe("a", rng.beta(5, 2, 100))
    observe("b", rng.beta(5, 2, 100))
    observe("c", rng.beta(5, 2, 300))
    observe("d", rng.beta(1, 5, 100))  # shifted
    got = _samples(metrics)
    label_sets = {k[1] for k in got if k[1]}
    assert label_sets == {"a", "b", AGGREGATE_LABEL_SET}
    assert got[("trustserve_trust_window_samples", AGGREGATE_LABEL_SET, "")] == 400
    assert got[("trustserve_trust_drift", AGGREGATE_LABEL_SET, "psi")] > 0.25  # the worst of c and d
    c_acc = float(np.mean(monitor.snapshot("c").acceptance_rate))
    d_acc = float(np.mean(monitor.snapshot("d").acceptance_rate))
    expected = (300 * c_acc + 100 * d_acc) / 400
    assert abs(got[("trustserve_trust_live_acceptance_ratio", AGGREGATE_LABEL_SET, "")] - expected) < 1e-9
    monitor.forget("c")
    monitor.forget("d")
    assert {k[1] for k in _samples(metrics) if k[1]} == {"a", "b"}  # the aggregate goes too


def test_deleting_a_label_set_removes_its_trust_series() -> None:
    metrics, _, (observe, rng) = _setup()
    observe("a", rng.beta(5, 2, 100))
    metrics.render()
    metrics.forget_label_set("a")
    text = metrics.registry
    assert not [s for f in text.collect() for s in f.samples if s.labels.get("label_set") == "a"]
