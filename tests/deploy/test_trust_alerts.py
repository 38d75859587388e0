"""Live trust alerts, evaluated by a real Prometheus scraping a real trustserve on the offline model.

A Fashion-MNIST label set (support images, then a coverage-rule calibration on held-out Fashion-MNIST
images) answers first more Fashion-MNIST images: the drift, acceptance and estimated-accuracy alerts stay
silent. Then it answers Animal-MNIST images (none of its labels fit): the drift and acceptance alerts fire
(and the ATC one), as Prometheus evaluates deploy/prometheus/alerts.yml.

Only what a test must change differs from the deployed files: 1 s scrape / evaluation intervals, the
target, and each rule's ``for:`` shortened to ``FOR`` (the deployed 10 m would make the test 10 minutes
long); thresholds and expressions are the deployed ones. The server's window is 200 answers with 100
needed before rates and drift are reported (deployed defaults: 1000 and 300), so every wait is short. With
200 calibration and 200 window images, PSI under no shift is ≈ χ²₉ · (1/200 + 1/200) (mean 0.09); a false
drift alert (PSI > 0.25) has probability ≈ 1e-3, and the seeds are fixed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from app.trust.datasets import LabelledImages, load_dataset
from tests.deploy.promql import ALERT_RULES
from tests.deploy.test_prometheus import PROMETHEUS, Prometheus, render_config, wait_for
from tests.support.live_server import LiveServer, default_server
from tests.support.uploads import png_files

TRUST_ALERTS = (
    "TrustserveTrustDrift",
    "TrustserveAcceptanceBelowCalibration",
    "TrustserveEstimatedAccuracyDrop",
)
FOR = "2s"
SHOTS = 4
N_CALIBRATION = 200
WINDOW = 200
CHUNK = 50
SERVER_ENV = {
    "TRUSTSERVE_MONITOR_WINDOW_SIZE": str(WINDOW),
    "TRUSTSERVE_MONITOR_MIN_SAMPLES": "100",
    "TRUSTSERVE_REQUEST_TIMEOUT_S": "300",
    "TRUSTSERVE_WARMUP": "false",
    "TRUSTSERVE_LOG_LEVEL": "WARNING",
}

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.timeout(900),  # a fresh machine first exports the offline model's towers (~2.5 min)
    pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="the prometheus binary is not installed"),
]


def _classify(http: httpx.Client, data: LabelledImages) -> list[dict[str, Any]]:
    results = []
    for start in range(0, len(data), CHUNK):
        images = [data.images[i] for i in range(start, min(start + CHUNK, len(data)))]
        r = http.post("/v1/classify", files=png_files(images, "image"), data={"label_set": "fashion"})
        assert r.status_code == 200, r.text
        results += r.json()["results"]
    return results


def _short_rules(root: Path) -> Path:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = FOR
    path = root / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("trust-alerts-server")
    srv = default_server(root / "store", log_path=root / "server.log", env=SERVER_ENV).start()
    try:
        yield srv.wait_ready(600)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def prometheus(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    root = tmp_path_factory.mktemp("trust-alerts-prometheus")
    config = render_config(server.url.removeprefix("http://"))
    config["rule_files"] = [str(_short_rules(root))]
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = Prometheus(root / "prometheus.yml", root / "data", root / "prometheus.log")
    try:
        yield prom.start()
    finally:
        prom.stop()


def _trust_alerts(prometheus: Prometheus) -> dict[str, str]:
    """alert name -> state (pending / firing) of the trust alerts on the label set."""
    alerts = prometheus.api("alerts")["alerts"]
    return {
        a["labels"]["alertname"]: a["state"]
        for a in alerts
        if a["labels"]["alertname"] in TRUST_ALERTS and a["labels"].get("label_set") == "fashion"
    }


def _scraped_window(prometheus: Prometheus, samples: int, psi: float) -> bool:
    """Prometheus holds the server's current window (its size and its PSI)."""
    size = prometheus.query('trustserve_trust_window_samples{label_set="fashion"}')
    drift = prometheus.query('trustserve_trust_drift{label_set="fashion", statistic="psi"}')
    return (
        bool(size and drift)
        and float(size[0]["value"][1]) == samples
        and (abs(float(drift[0]["value"][1]) - psi) < 1e-9)
    )


def test_in_distribution_stays_quiet_and_a_shift_fires(server: LiveServer, prometheus: Prometheus) -> None:
    fashion = load_dataset("fashion-mnist", "test", limit=N_CALIBRATION + WINDOW, seed=1)
    order = np.random.default_rng(0).permutation(len(fashion))
    calibration, held_out = fashion.subset(order[:N_CALIBRATION]), fashion.subset(order[N_CALIBRATION:])
    support = load_dataset("fashion-mnist", "train", limit=10 * SHOTS, seed=2)
    animals = load_dataset("animal-mnist", "test", limit=WINDOW, seed=0)
    names = fashion.class_names
    http = httpx.Client(base_url=server.url, timeout=600)
    r = http.post("/v1/label-sets", json={"id": "fashion", "labels": names, "trust_score": "trustvlm_star"})
    assert r.status_code == 201, r.text
    r = http.post("/v1/label-sets/fashion/images", files=png_files(list(support.images), "images"),
                  data={"labels": [names[i] for i in support.labels]})  # fmt: skip
    assert r.status_code == 200, r.text
    r = http.post(
        "/v1/label-sets/fashion/calibrate",
        files=png_files(list(calibration.images), "images"),
        data={"labels": [names[i] for i in calibration.labels], "rule": "target_coverage",
              "target_coverage": "0.8"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    calibrated = r.json()["calibration"]

    # in distribution: a full window of held-out Fashion-MNIST images
    _classify(http, held_out)
    quiet = http.get("/v1/label-sets/fashion/monitor").json()
    assert quiet["window"]["samples"] == WINDOW and quiet["drift"]["psi"] is not None
    print("in distribution:", quiet)
    wait_for(lambda: _scraped_window(prometheus, WINDOW, quiet["drift"]["psi"]), "the window to be scraped")
    time.sleep(3 * 1.0 + 2.0)  # a `for: 2s` rule would be firing after three more evaluations
    assert _trust_alerts(prometheus) == {}, quiet

    # shifted: Animal-MNIST images sent to the Fashion-MNIST label set replace the whole window
    started = time.monotonic()
    _classify(http, animals)
    shifted = http.get("/v1/label-sets/fashion/monitor").json()
    print("shifted:", shifted, "calibration coverage", calibrated["coverage"])
    assert shifted["window"]["samples"] == WINDOW
    assert shifted["drift"]["psi"] > 0.25
    assert shifted["live_acceptance_rate"] < 0.5 * calibrated["coverage"]
    sent = time.monotonic()

    def fired() -> dict[str, str] | None:
        states = _trust_alerts(prometheus)
        needed = {"TrustserveTrustDrift", "TrustserveAcceptanceBelowCalibration"}
        return states if all(states.get(name) == "firing" for name in needed) else None

    states = wait_for(fired, "the drift and acceptance alerts to fire", timeout_s=30)
    print("alerts:", states, f"fired {time.monotonic() - sent:.1f} s after the last shifted answer",
          f"({sent - started:.1f} s to send them)")  # fmt: skip
    assert shifted["estimated_accuracy"] < shifted["calibration_accuracy"] - 0.1
    assert wait_for(lambda: _trust_alerts(prometheus).get("TrustserveEstimatedAccuracyDrop") == "firing",
                    "the estimated-accuracy alert to fire", timeout_s=15)  # fmt: skip
