"""Cost of live trust monitoring: added classify latency and memory per label set (issue 17).

One process, the real app (create_app, the embedded offline model, in-process ASGI client):

1. a Fashion-MNIST label set gets 4 support images per class and a coverage-rule calibration on 200
   images; then ``--requests`` single-image classify requests are timed end to end (median, p95);
2. on the same label set and the same scored outputs, the per-request monitoring work is timed alone:
   ``record_live_answers`` (append to the live window) — the only monitoring code on the classify path — and,
   for reference, ``prediction_sets_for`` (the conformal set, a feature rather than monitoring) and one
   scrape-time export of ``--label-sets`` full windows (not on the classify path);
3. memory: tracemalloc over creating ``--label-sets`` full windows, per label set, next to the stated
   bound (``MonitorSettings.bytes_per_label_set``) and the calibration record's JSON size.

Run: ``python -m benchmarks.trust_monitoring.overhead``. Prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from app.engine.scoring import score_batch
from app.labelsets.live_trust import prediction_sets_for, record_live_answers
from app.observability.metrics import ServiceMetrics
from app.observability.trust import TrustExporter
from app.trust.datasets import load_dataset
from app.trust.monitoring import MonitorSettings, TrustMonitor


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run(requests: int, label_sets: int, store_dir: str) -> dict[str, Any]:
    settings = Settings(store_dir=store_dir, warmup=False, log_level="WARNING")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 900
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.5)
        data = load_dataset("fashion-mnist", "test", limit=200 + requests, seed=3)
        support = load_dataset("fashion-mnist", "train", limit=40, seed=4)
        names = data.class_names
        assert client.post("/v1/label-sets", json={"id": "f", "labels": names}).status_code == 201
        files = [("images", (f"{i}.png", _png(im), "image/png")) for i, im in enumerate(support.images)]
        r = client.post(
            "/v1/label-sets/f/images", files=files, data={"labels": [names[i] for i in support.labels]}
        )
        assert r.status_code == 200, r.text
        cal = data.subset(np.arange(200))
        files = [("images", (f"{i}.png", _png(im), "image/png")) for i, im in enumerate(cal.images)]
        form = {"labels": [names[i] for i in cal.labels], "rule": "target_coverage", "target_coverage": "0.8"}
        r = client.post("/v1/label-sets/f/calibrate", files=files, data=form)
        assert r.status_code == 200, r.text
        record_json_bytes = len(json.dumps(r.json()["calibration"]))

        latencies = []
        for i in range(200, 200 + requests):
            body = _png(data.images[i])
            start = time.perf_counter()
            r = client.post(
                "/v1/classify", files=[("image", ("x.png", body, "image/png"))], data={"label_set": "f"}
            )
            latencies.append(time.perf_counter() - start)
            assert r.status_code == 200
        app = client.app
        view = app.state.label_sets.repository.get_view("f")
        engine = app.state.engine
        rng = np.random.default_rng(0)
        scored = score_batch(
            rng.normal(size=(1, view.text_embeddings.shape[1])).astype(np.float32),
            rng.normal(size=(1, view.prototypes.shape[1])).astype(np.float32),
            view.text_embeddings, logit_scale=engine.logit_scale, prototypes=view.prototypes,
            has_prototype=view.has_prototype, alpha=view.alpha, visual_temperature=view.visual_temperature,
        )  # fmt: skip
        monitor = app.state.trust_monitor
        observe = _timed(lambda: record_live_answers(monitor, view, [1.2], [True]), 2000)
        sets = _timed(lambda: prediction_sets_for(view, scored), 2000)
        reference = view.calibration.monitor

    mon_settings = MonitorSettings()
    big = TrustMonitor(mon_settings)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for k in range(label_sets):
        big.observe(f"set-{k}", model="m", version=1, identity="c", reference=reference,
                    scores=rng.normal(1.2, 0.2, mon_settings.window_size),
                    accepted=np.ones(mon_settings.window_size, bool))  # fmt: skip
    per_set = (tracemalloc.get_traced_memory()[0] - before) / label_sets
    tracemalloc.stop()
    metrics = ServiceMetrics()
    exporter = TrustExporter(metrics, big, max_series=50)
    export = _timed(exporter.export, 5)

    p50 = statistics.median(latencies)
    return {
        "classify_single_image_ms": {
            "p50": 1000 * p50,
            "p95": 1000 * float(np.quantile(latencies, 0.95)),
            "requests": requests,
        },
        "record_live_answers_us": {
            "median": 1e6 * statistics.median(observe),
            "p95": 1e6 * float(np.quantile(observe, 0.95)),
        },
        "monitoring_share_of_classify_p50_percent": 100 * statistics.median(observe) / p50,
        "prediction_set_us": {"median": 1e6 * statistics.median(sets)},
        "prediction_set_share_of_classify_p50_percent": 100 * statistics.median(sets) / p50,
        "scrape_export_ms": {
            "label_sets": label_sets,
            "max_series": 50,
            "median": 1000 * statistics.median(export),
        },
        "memory_per_label_set_bytes": {
            "measured_tracemalloc": per_set,
            "stated_bound_numbers_only": mon_settings.bytes_per_label_set(),
            "window_size": mon_settings.window_size,
        },
        "calibration_record_json_bytes": record_json_bytes,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--label-sets", type=int, default=256)
    parser.add_argument("--store-dir", default="/tmp/trustserve-monitor-bench")
    args = parser.parse_args()
    print(json.dumps(run(args.requests, args.label_sets, args.store_dir), indent=1))


if __name__ == "__main__":
    main()
