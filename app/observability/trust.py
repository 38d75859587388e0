"""Live trust numbers (``app.trust.monitoring``) as Prometheus gauges, with bounded cardinality.

At each scrape the first ``max_series`` monitored label sets (first come, and they keep their series until
their window goes) get series of their own; every other label set is aggregated into
``label_set="_other"``: answers summed, rates and accuracies averaged weighted by window size, drift the
maximum (so a drift alert still fires for a set hidden in the aggregate). A label set whose window is gone
(deleted, recalibrated away, evicted) loses its series at the next scrape. While a window holds fewer
than ``min_samples`` scores, the live acceptance, estimated accuracy and drift gauges are NaN (too few
answers to say anything), so alert rules need no sample-count guard of their own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
from prometheus_client import Gauge

from app.observability.metrics import ServiceMetrics
from app.trust.monitoring import MonitorSnapshot, TrustMonitor

AGGREGATE_LABEL_SET = "_other"
DRIFT_STATISTICS = ("psi", "ks")


def aggregate(snapshots: Sequence[MonitorSnapshot], label_set: str = AGGREGATE_LABEL_SET) -> MonitorSnapshot:
    """One snapshot standing for several: sums, window-weighted means, worst drift."""
    weights = np.array([s.samples for s in snapshots], dtype=np.float64)

    def mean(values: list[float]) -> float:
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v) & (weights > 0)
        return float(np.average(v[ok], weights=weights[ok])) if ok.any() else float("nan")

    def worst(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return max(finite) if finite else float("nan")

    starts = [s.window_start for s in snapshots if s.window_start is not None]
    ends = [s.window_end for s in snapshots if s.window_end is not None]
    return MonitorSnapshot(
        label_set=label_set,
        model=snapshots[0].model,
        version=0,
        score="mixed",
        samples=int(weights.sum()),
        undefined_scores=sum(s.undefined_scores for s in snapshots),
        window_start=min(starts) if starts else None,
        window_end=max(ends) if ends else None,
        acceptance_rate=mean([s.acceptance_rate for s in snapshots]),
        calibration_coverage=mean([s.calibration_coverage for s in snapshots]),
        estimated_accuracy=mean([s.estimated_accuracy for s in snapshots]),
        calibration_accuracy=mean([s.calibration_accuracy for s in snapshots]),
        psi=worst([s.psi for s in snapshots]),
        ks=worst([s.ks for s in snapshots]),
        min_samples=snapshots[0].min_samples,
        enough=any(s.enough for s in snapshots),
    )


class TrustExporter:
    """Copies the monitor's snapshots into ``ServiceMetrics`` gauges before each exposition."""

    def __init__(self, metrics: ServiceMetrics, monitor: TrustMonitor, max_series: int) -> None:
        self.metrics = metrics
        self.monitor = monitor
        self.max_series = max_series
        self._series: dict[str, str] = {}  # label-set label value -> model label value

    def export(self) -> None:
        snapshots = self.monitor.snapshots()
        present = {s.label_set for s in snapshots}
        for label_set in [k for k in self._series if k not in present and k != AGGREGATE_LABEL_SET]:
            self._remove(label_set)
        owners = set(self._series) - {AGGREGATE_LABEL_SET}
        own, rest = [], []
        for s in snapshots:
            if s.label_set in owners or len(owners) < self.max_series:
                owners.add(s.label_set)
                own.append(s)
            else:
                rest.append(s)
        for s in own:
            self._set(s)
        if rest:
            self._set(aggregate(rest))
        elif AGGREGATE_LABEL_SET in self._series:
            self._remove(AGGREGATE_LABEL_SET)
        self.metrics.trust_monitored.set(len(snapshots))

    def _set(self, s: MonitorSnapshot) -> None:
        m, labels = self.metrics, (s.model, s.label_set)
        if self._series.get(s.label_set, s.model) != s.model:
            self._remove(s.label_set)
        self._series[s.label_set] = s.model

        def live(value: float) -> float:  # NaN while too few answers to say anything
            return value if s.enough else float("nan")

        m.trust_acceptance.labels(*labels).set(live(s.acceptance_rate))
        m.trust_calibration_coverage.labels(*labels).set(s.calibration_coverage)
        m.trust_estimated_accuracy.labels(*labels).set(live(s.estimated_accuracy))
        m.trust_calibration_accuracy.labels(*labels).set(s.calibration_accuracy)
        m.trust_drift.labels(*labels, "psi").set(live(s.psi))
        m.trust_drift.labels(*labels, "ks").set(live(s.ks))
        m.trust_window_samples.labels(*labels).set(s.samples)
        span = (s.window_end - s.window_start) if s.window_start is not None and s.window_end else 0.0
        m.trust_window_span.labels(*labels).set(span)

    def _remove(self, label_set: str) -> None:
        model = self._series.pop(label_set, None)
        if model is None:
            return
        for gauge in self.metrics.trust_gauges():
            if gauge is self.metrics.trust_drift:
                for statistic in DRIFT_STATISTICS:
                    _discard(gauge, model, label_set, statistic)
            else:
                _discard(gauge, model, label_set)


def _discard(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
