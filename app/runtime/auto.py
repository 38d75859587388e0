"""What ``auto`` decides with: the round-robin speed measurement of the candidates that passed parity, where
the verdict is stored (``verdicts/`` in the export cache, keyed by tower, precision, device, machine and
runtime versions, so a warm start re-reads it instead of measuring), and the order tried without torch."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from app.runtime.cache import ExportCache
from app.runtime.executors import TowerExecutor, runtime_version
from app.runtime.machine import machine_fingerprint
from app.runtime.source import TowerSource
from app.runtime.types import Precision, Runtime

SPEED_BATCH = 8
# Order tried when speeds cannot be measured (no torch to build what is missing): the usual winner first.
STATIC_PREFERENCE: tuple[Runtime, ...] = ("openvino", "onnxruntime", "torch")


def measure_speeds(
    executors: dict[str, TowerExecutor], inputs: dict[str, np.ndarray], budget_s: float = 6.0
) -> dict[str, float]:
    """Items per second of each executor on ``inputs``, timed round-robin (every round runs each executor
    once, so a change in the machine's load hits all of them alike; a shared machine otherwise decides
    the verdict): 2 warm-up runs each, then the median of 3 to 7 rounds (``budget_s`` decides)."""
    batch = len(next(iter(inputs.values())))
    for executor in executors.values():
        for _ in range(2):
            executor.run(inputs)
    times: dict[str, list[float]] = {name: [] for name in executors}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < 7 and (rounds < 3 or time.perf_counter() < deadline):
        for name, executor in executors.items():
            started = time.perf_counter()
            executor.run(inputs)
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return {name: batch / statistics.median(values) for name, values in times.items()}


def verdict_path(
    cache: ExportCache,
    source: TowerSource,
    precision: Precision,
    device: str,
    threads: int,
    candidates: list[Runtime],
) -> Path:
    """Where ``auto``'s verdict for this tower, precision, device, machine and candidate set is stored."""
    fields = {
        "model": source.model,
        "tower": source.tower,
        "identity": source.identity,
        "signature": source.spec.describe(),
        "precision": precision,
        "device": device,
        "machine": machine_fingerprint(threads),
        "candidates": {r: runtime_version(r) for r in candidates},
    }
    return cache.root / "verdicts" / f"{cache.key(f'{source.model}-{source.tower}', fields)}.json"
