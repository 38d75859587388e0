"""The Grafana dashboard and the Prometheus alert rules read only metrics the server really exports.

Two references: the families ``ServiceMetrics`` declares (complete, because a labelled family shows no
samples in /metrics until a label combination is used) and a live /metrics scrape of a real server after
real classify traffic (catches series that the client library does not emit, such as ``_sum`` of a
histogram with negative buckets). ``trustserve_decisions_total`` has samples only once a calibrated label
set answers, ``trustserve_overload_rejections_total`` only after a 429 and the live trust gauges only once a
calibrated label set has a live window, so for those the live check is by family, not by sample (the
trust gauges' samples are checked against a real Prometheus in tests/deploy/test_trust_alerts.py).
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import (
    PROMETHEUS_TARGET_SERIES,
    TARGET_LABELS,
    alert_queries,
    dashboard_queries,
    declared_families,
    family_of,
    load_dashboard,
    series_used,
)

# Families with no samples after plain classify traffic, and why (see the module docstring).
FAMILIES_WITHOUT_SAMPLES_YET = {
    "trustserve_decisions": "needs a label set with a calibrated threshold",
    "trustserve_overload_rejections": "needs a full queue (429)",
    **{
        f"trustserve_trust_{name}": "needs answers of a calibrated label set (live trust monitoring)"
        for name in (
            "live_acceptance_ratio",
            "calibration_coverage_ratio",
            "estimated_accuracy_ratio",
            "calibration_accuracy_ratio",
            "drift",
            "window_samples",
            "window_span_seconds",
        )
    },
}


def all_queries() -> list[tuple[str, str]]:
    return [*dashboard_queries(load_dashboard()), *((f"alert {n}", q) for n, q in alert_queries())]


def scraped(exposition: str) -> tuple[set[str], set[str]]:
    """(family names, sample names) in a /metrics text; the ``_created`` timestamps are left out."""
    families, samples = set(), set()
    for family in text_string_to_metric_families(exposition):
        if family.name.endswith("_created"):
            continue
        families.add(family.name)
        samples |= {s.name for s in family.samples}
    return families, samples


def test_queries_are_found() -> None:
    queries = all_queries()
    assert len(queries) >= 30
    assert sum(where.startswith("alert") for where, _ in queries) == 9


@pytest.mark.parametrize(("where", "expr"), [pytest.param(w, q, id=w) for w, q in all_queries()])
def test_query_reads_only_declared_metrics_and_labels(where: str, expr: str) -> None:
    families = declared_families()
    for use in series_used(expr):
        if use.name in PROMETHEUS_TARGET_SERIES:
            assert use.matcher_labels <= TARGET_LABELS, f"{where}: {use}"
            continue
        family = family_of(use.name, families)
        assert family is not None, f"{where}: {use.name!r} is not a series of any exported family"
        allowed = family.labels | TARGET_LABELS | ({"le"} if use.name.endswith("_bucket") else set())
        assert use.matcher_labels <= allowed, (
            f"{where}: {use.name} has no label {use.matcher_labels - allowed}"
        )


def test_dashboard_shows_every_exported_family() -> None:
    used = {
        family.name
        for _, expr in dashboard_queries(load_dashboard())
        for use in series_used(expr)
        if (family := family_of(use.name, declared_families())) is not None
    }
    assert used == set(declared_families())


def test_dashboard_agrees_with_live_scrape(served_metrics: str) -> None:
    live_families, live_samples = scraped(served_metrics)
    declared = declared_families()
    assert live_families == set(declared)
    observed = {f for f in declared if declared[f].series_names() & live_samples}
    assert set(declared) - observed == set(FAMILIES_WITHOUT_SAMPLES_YET)
    for where, expr in all_queries():
        for use in series_used(expr):
            family = family_of(use.name, declared)
            if family is not None and family.name in observed:
                assert use.name in live_samples, f"{where}: the server never emits {use.name!r}"


def test_trust_score_histogram_has_no_sum_series(served_metrics: str) -> None:
    """Why the live check matters: negative buckets make the client drop ``_sum`` (so no mean panel)."""
    _, live_samples = scraped(served_metrics)
    assert "trustserve_trust_score_bucket" in live_samples
    assert "trustserve_trust_score_sum" not in live_samples


def test_dashboard_panels_cover_the_issue_list() -> None:
    dashboard = load_dashboard()
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "request rate",
        "error rate",
        "latency percentiles",
        "stage duration",
        "batch size",
        "queue depth",
        "trust-score distribution",
        "reject rate by label set and model",
        "model ready",
        "live acceptance vs calibration coverage",
        "estimated accuracy (atc)",
        "trust-score drift from calibration",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
