"""PromQL in the deploy files (Grafana dashboard, Prometheus alert rules) against the metrics the server
exports: which series an expression reads, which exported family each one belongs to."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from app.observability.metrics import ServiceMetrics
from tests.deploy.manifests import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy/grafana/dashboards/trustserve.json"
ALERT_RULES = REPO_ROOT / "deploy/prometheus/alerts.yml"

# Series Prometheus itself adds to every scrape target (not exported by the server).
PROMETHEUS_TARGET_SERIES = frozenset({"up"})
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Grafana's built-in interval variables, replaced by a fixed window before parsing.
_INTERVAL_VARIABLES = re.compile(
    r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}"
)
_TEMPLATE_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@dataclass(frozen=True)
class Family:
    """One exported metric family: base name, type and label names."""

    name: str
    type: str
    labels: frozenset[str]

    def series_names(self) -> set[str]:
        return {self.name + suffix for suffix in _SUFFIXES[self.type]}


@dataclass(frozen=True)
class SeriesUse:
    """A vector selector in an expression: series name and the label names it matches on."""

    name: str
    matcher_labels: frozenset[str]


def declared_families() -> dict[str, Family]:
    """Every family ``ServiceMetrics`` defines. Labelled ones have no samples in /metrics until used, so
    this, not a scrape, is the complete list. Label names are read from ``_labelnames``: prometheus_client
    has no public accessor for them."""
    families = {}
    for metric in vars(ServiceMetrics(CollectorRegistry())).values():
        if isinstance(metric, MetricWrapperBase):
            [described] = metric.describe()
            families[described.name] = Family(described.name, described.type, frozenset(metric._labelnames))
    return families


def grafana_to_promql(expr: str) -> str:
    """Grafana template syntax to plain PromQL: intervals become ``5m``, other variables match anything."""
    expr = _INTERVAL_VARIABLES.sub("5m", expr)
    return _TEMPLATE_VARIABLE.sub(".*", expr)


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and every ``label_values`` template variable."""

    def panels(items: list[dict]) -> Iterator[dict]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel['title']!r} target {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query)
        assert match is not None, f"variable {variable['name']}: only label_values(...) queries are used"
        if match["selector"]:
            yield f"variable {variable['name']!r}", match["selector"]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def alert_queries() -> Iterator[tuple[str, str]]:
    """``(alert name, PromQL)`` for every rule in deploy/prometheus/alerts.yml."""
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def series_used(expr: str) -> list[SeriesUse]:
    """Every vector selector in a PromQL expression (Grafana variables substituted first), found by a real
    PromQL parser (PyPI ``promql-parser``: bindings of the Rust crate used by GreptimeDB)."""
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser is not installed")
    uses: list[SeriesUse] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            name = node.name or next((m.value for m in matchers if m.name == "__name__"), None)
            assert name, f"selector without a metric name in {expr!r}"
            labels = frozenset(m.name for m in matchers if m.name != "__name__")
            uses.append(SeriesUse(name, labels))

    promql_parser.walk(promql_parser.parse(grafana_to_promql(expr)), visit)
    return uses


def family_of(series: str, families: dict[str, Family]) -> Family | None:
    """The family a series name belongs to, honouring the type's suffixes (``x_bucket`` only for a
    histogram ``x``, ``x_total`` only for a counter ``x``); None when it belongs to none."""
    for family in families.values():
        if series in family.series_names():
            return family
    return None
