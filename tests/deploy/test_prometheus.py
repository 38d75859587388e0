"""A real Prometheus (the Debian ``prometheus`` binary) scrapes a real trustserve on loopback.

Prometheus runs on a copy of deploy/prometheus/prometheus.yml in which only what a test must change is
changed: the target (the live test server instead of the compose service ``trustserve:8000``), the
intervals (1 s instead of 15 s) and the rule file's path (absolute). Every wait is bounded.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import CLASSIFY_REQUESTS
from tests.deploy.promql import (
    ALERT_RULES,
    REPO_ROOT,
    alert_queries,
    dashboard_queries,
    grafana_to_promql,
    load_dashboard,
)
from tests.support.live_server import LiveServer, free_port

PROMETHEUS_CONFIG = REPO_ROOT / "deploy/prometheus/prometheus.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WAIT_S = 30.0

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="the prometheus binary is not installed"),
]


def render_config(target: str) -> dict[str, Any]:
    """The deploy config with ``target`` as the trustserve job's only target, 1 s intervals and an
    absolute rule-file path."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / f) for f in config["rule_files"]]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "trustserve"]
    job["static_configs"] = [{**job["static_configs"][0], "targets": [target]}]
    return config


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class Prometheus:
    """A Prometheus subprocess with its own storage folder on a free loopback port."""

    def __init__(self, config_file: Path, storage: Path, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_path
        self.command = [
            PROMETHEUS,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            "--log.level=warn",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready, f"Prometheus to be ready ({self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def api(self, path: str, what: str = "", **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` after checking ``status == success``."""
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{what} {params}: {body}"
        return body["data"]

    def query(self, expr: str, what: str = "") -> list[dict[str, Any]]:
        data = self.api("query", what, query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]


@pytest.fixture(scope="module")
def prometheus(
    live_server: LiveServer, served_metrics: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Prometheus scraping the live server (which has already answered real classify requests)."""
    root = tmp_path_factory.mktemp("prometheus")
    config_file = root / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(render_config(live_server.url.removeprefix("http://"))))
    server = Prometheus(config_file, root / "data", root / "prometheus.log")
    try:
        yield server.start()
    finally:
        server.stop()


def test_rendered_config_changes_only_targets_intervals_and_rule_path() -> None:
    deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    rendered = render_config("127.0.0.1:1234")
    [job] = [j for j in rendered["scrape_configs"] if j["job_name"] == "trustserve"]
    [deployed_job] = [j for j in deployed["scrape_configs"] if j["job_name"] == "trustserve"]
    assert job["static_configs"] == [{**deployed_job["static_configs"][0], "targets": ["127.0.0.1:1234"]}]
    job["static_configs"] = deployed_job["static_configs"]
    rendered["global"] = deployed["global"]
    assert rendered["rule_files"] == [str(ALERT_RULES)]
    rendered["rule_files"] = deployed["rule_files"]
    assert rendered == deployed


def test_target_is_up(prometheus: Prometheus, live_server: LiveServer) -> None:
    def healthy_target() -> dict[str, Any] | None:
        targets = prometheus.api("targets", state="active")["activeTargets"]
        return next((t for t in targets if t["health"] == "up"), None)

    target = wait_for(healthy_target, "the trustserve target to be scraped")
    assert target["labels"]["job"] == "trustserve"
    assert target["scrapeUrl"] == f"{live_server.url}/metrics"
    [up] = prometheus.query('up{job="trustserve"}')
    assert up["value"][1] == "1"


def test_server_metrics_are_queryable(prometheus: Prometheus) -> None:
    """Prometheus holds exactly the classify requests the test sent, and the model's state."""
    query = 'sum(trustserve_http_requests_total{job="trustserve", route="/v1/classify", status="200"})'
    wait_for(lambda: prometheus.query(query), "classify requests to reach Prometheus")
    [total] = prometheus.query(query)
    assert float(total["value"][1]) == CLASSIFY_REQUESTS
    [ready] = prometheus.query("trustserve_model_ready")
    assert ready["metric"]["model"] == "tiny-clip" and ready["value"][1] == "1"
    images = prometheus.query('sum(trustserve_images_classified_total{label_set="_adhoc"})')
    assert float(images[0]["value"][1]) == CLASSIFY_REQUESTS
    stages = {s["metric"]["stage"] for s in prometheus.query("trustserve_stage_duration_seconds_count")}
    assert {"decode", "preprocess", "queue_wait", "inference", "scoring"} <= stages


def test_every_dashboard_and_alert_expression_runs(prometheus: Prometheus) -> None:
    """Prometheus itself accepts each query (Grafana variables substituted) and the latency panel has
    data once two scrapes lie inside its rate window."""
    wait_for(lambda: prometheus.query("trustserve_model_ready"), "the first scrape")
    queries = [*dashboard_queries(load_dashboard()), *alert_queries()]
    for where, expr in queries:
        prometheus.query(grafana_to_promql(expr), what=where)  # fails on a rejected query
    p95 = (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(trustserve_http_request_duration_seconds_bucket{route="/v1/classify"}[1m])))'
    )
    wait_for(lambda: prometheus.query(p95), "two scrapes in the rate window")


def test_alert_rules_load_and_stay_quiet(prometheus: Prometheus) -> None:
    def evaluated_rules() -> list[dict[str, Any]] | None:
        [group] = prometheus.api("rules", type="alert")["groups"]
        rules = group["rules"]
        never = "0001-01-01T00:00:00Z"  # Go's zero time: not evaluated yet
        return rules if all(r["lastEvaluation"] != never for r in rules) else None

    rules = wait_for(evaluated_rules, "one evaluation of the alert rules")
    assert {r["name"] for r in rules} == {name for name, _ in alert_queries()}
    for rule in rules:
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive", rule
