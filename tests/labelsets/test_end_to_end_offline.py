"""The issue's acceptance run, over HTTP on the real server with the embedded offline model:
a Fashion-MNIST label set with support images, calibrated for "≤ 10 % risk at δ = 0.05", survives a
restart byte-for-byte, and classify decisions on a fresh test split keep the promised risk."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy.stats import beta

from app.trust.datasets import load_dataset, load_support
from tests.support.live_server import default_server
from tests.support.uploads import png_files

SHOTS = 16
N_CALIBRATION = 1000  # half tunes alpha / T_v, half picks the threshold
N_TEST = 400
CHUNK = 32
SERVER_ENV = {
    "TRUSTSERVE_REQUEST_TIMEOUT_S": "600",
    "TRUSTSERVE_WARMUP": "false",
    "TRUSTSERVE_LOG_LEVEL": "WARNING",
}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fashion_mnist_calibrated_label_set_survives_restart_and_keeps_its_risk(tmp_path: Path) -> None:
    support = load_support("fashion-mnist", SHOTS, seed=0)
    pool = load_dataset("fashion-mnist", "test", limit=N_CALIBRATION + N_TEST, seed=0)
    order = np.random.default_rng(0).permutation(len(pool))
    calibration, fresh = pool.subset(order[:N_CALIBRATION]), pool.subset(order[N_CALIBRATION:])
    names = pool.class_names
    store, log = tmp_path / "store", tmp_path / "server.log"

    server = default_server(store, log_path=log, env=SERVER_ENV).start().wait_ready(600)
    try:
        http = httpx.Client(base_url=server.url, timeout=3000)
        r = http.post(
            "/v1/label-sets", json={"id": "fashion", "labels": names, "trust_score": "trustvlm_star"}
        )
        assert r.status_code == 201, r.text
        for start in range(0, len(support), CHUNK):
            part = support.subset(np.arange(start, min(start + CHUNK, len(support))))
            labels = [names[i] for i in part.labels]
            r = http.post(
                "/v1/label-sets/fashion/images",
                files=png_files(part.images, "images"),
                data={"labels": labels},
            )
            assert r.status_code == 200, r.text
        r = http.post(
            "/v1/label-sets/fashion/calibrate",
            files=png_files(calibration.images, "images"),
            data={
                "labels": json.dumps([names[i] for i in calibration.labels]),
                "rule": "target_risk",
                "target_risk": "0.1",
                "delta": "0.05",
                "tune": "true",
            },
        )
        assert r.status_code == 200, r.text
        promised = r.json()["calibration"]
        print("calibration:", json.dumps(promised, indent=1))
        before = http.get("/v1/label-sets/fashion").content
        archive = http.get("/v1/label-sets/fashion/export").content
    finally:
        server.stop()

    server = default_server(store, log_path=log, env=SERVER_ENV).start().wait_ready(600)
    try:
        http = httpx.Client(base_url=server.url, timeout=3000)
        assert http.get("/v1/label-sets/fashion").content == before
        assert http.get("/v1/label-sets/fashion/export").content == archive
        accepted, errors = 0, 0
        for start in range(0, len(fresh), CHUNK):
            idx = np.arange(start, min(start + CHUNK, len(fresh)))
            part = fresh.subset(idx)
            r = http.post(
                "/v1/classify", files=png_files(part.images, "image"), data={"label_set": "fashion"}
            )
            assert r.status_code == 200, r.text
            for result, label in zip(r.json()["results"], part.labels):
                decision = result["decision"]
                assert decision["calibrated"] is True and decision["rule"] == "target_risk"
                if decision["accept"]:
                    predicted = (result["refined_prediction"] or result["prediction"])["index"]
                    accepted += 1
                    errors += int(predicted != label)
    finally:
        server.stop()
    risk = errors / max(accepted, 1)
    coverage = accepted / len(fresh)
    bound = promised["risk_upper_bound"]
    print(f"fresh split: {len(fresh)} images, accepted {accepted} (coverage {coverage:.3f}), "
          f"selective risk {risk:.4f}; promised <= {bound:.4f} <= 0.1 at delta 0.05")  # fmt: skip
    assert accepted > 0
    # The promise is about the true risk (with probability >= 1 - delta over the calibration draw); on a
    # finite test split, require the observed errors to be consistent with it: the one-sided 99 %
    # Clopper-Pearson lower bound of the test risk must not exceed the target.
    assert clopper_pearson_lower(errors, accepted, 0.01) <= 0.1, (errors, accepted)


def clopper_pearson_lower(errors: int, n: int, alpha: float) -> float:
    return 0.0 if errors == 0 else float(beta.ppf(alpha, errors, n - errors + 1))
