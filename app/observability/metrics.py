"""Prometheus metrics, one registry per app (so tests can build many apps in one process).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` durations, base units) with explicit
buckets; the Grafana dashboard in deploy/ only uses names defined here (a test checks it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SCORE_BUCKETS = tuple(round(x * 0.1, 1) for x in range(-10, 21))  # TrustVLM spans [-1, 2]; MSP [0, 1]

__all__ = ["PROMETHEUS_CONTENT_TYPE", "ServiceMetrics"]


class ServiceMetrics:
    """Every metric the server exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trustserve_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "trustserve_http_request_duration_seconds",
            "HTTP request duration",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("trustserve_http_requests_in_flight", "requests being served", registry=r)
        self.stage_duration = Histogram(
            "trustserve_stage_duration_seconds",
            "time per pipeline stage (decode, preprocess, queue_wait, inference, scoring) per item or batch",
            ["stage", "model"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "trustserve_batch_size", "items per model call", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "trustserve_queue_depth", "items waiting for the model", ["model"], registry=r
        )
        self.overload_rejections = Counter(
            "trustserve_overload_rejections_total",
            "requests refused with 429 because the queue was full",
            ["model"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "trustserve_model_load_seconds", "time to load the model at start-up", ["model"], registry=r
        )
        self.model_ready = Gauge(
            "trustserve_model_ready", "1 when the model is loaded and warm-up passed", ["model"], registry=r
        )
        self.model_runtime = Gauge(
            "trustserve_model_runtime_info",
            "1 for the runtime and precision each model tower runs on",
            ["model", "tower", "runtime", "precision"],
            registry=r,
        )
        self.images_classified = Counter(
            "trustserve_images_classified_total", "images classified", ["model", "label_set"], registry=r
        )
        self.trust_score = Histogram(
            "trustserve_trust_score",
            "distribution of the configured trust score (drift shows here)",
            ["model", "label_set", "score"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "trustserve_decisions_total",
            "accept/reject decisions of calibrated label sets and models",
            ["model", "label_set", "decision"],
            registry=r,
        )
        self.label_sets = Gauge("trustserve_label_sets", "label sets loaded in memory", registry=r)

    @contextmanager
    def timed(self, stage: str, model: str) -> Iterator[None]:
        """Observe the duration of the enclosed block as one ``stage`` of ``model``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_duration.labels(stage, model).observe(time.perf_counter() - started)

    def observe_answers(
        self, model: str, label_set: str, answers: Iterable[tuple[str, float | None, bool | None]]
    ) -> None:
        """Per classified image: (score name, its value or None, the calibrated decision or None)."""
        count = 0
        for score, value, accept in answers:
            count += 1
            if value is not None:
                self.trust_score.labels(model, label_set, score).observe(value)
            if accept is not None:
                self.decisions.labels(model, label_set, "accept" if accept else "reject").inc()
        self.images_classified.labels(model, label_set).inc(count)

    def forget_label_set(self, label_set_id: str) -> None:
        """Remove every series of a deleted label set (so /metrics does not keep it forever)."""
        for metric in (self.images_classified, self.trust_score, self.decisions):
            names = metric._labelnames  # the label names given at construction
            series = {
                tuple(sample.labels[n] for n in names)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("label_set") == label_set_id
            }
            for values in series:
                metric.remove(*values)

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.registry)
