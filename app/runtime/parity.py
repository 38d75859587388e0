"""The parity check: an exported or reduced-precision tower against the torch fp32 reference on probe inputs.

fp32 must be exact enough to be invisible, max |Δ| ≤ 1e-4 · max(1, max |reference|) on every output; bf16
and int8 trade exactness for speed and only have to keep every output row's cosine to the reference ≥ 0.95
(bf16) / 0.8 (int8) — a check that the conversion works; their effect on answers is measured by
``benchmarks/runtime/quality.py`` (top-1 agreement, TrustVLM AUROC).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.runtime.types import Precision

FP32_TOLERANCE = 1e-4
# Reduced precisions only have to show a working conversion (outputs pointing the same way); what they
# cost in answers is measured, not assumed: benchmarks/runtime/quality.py (top-1 agreement, AUROC).
MIN_COSINE: dict[Precision, float] = {"fp32": 1.0, "bf16": 0.95, "int8": 0.8}
PARITY_BATCH = 4


def parity(reference: list[np.ndarray], outputs: list[np.ndarray], precision: Precision) -> dict[str, Any]:
    """Max |Δ|, the fp32 tolerance and the worst row cosine of every output against the reference."""
    max_abs, worst_cos, passed = 0.0, 1.0, True
    for ref, out in zip(reference, outputs, strict=True):
        if ref.shape != out.shape or not np.isfinite(out).all():
            return {"passed": False, "max_abs": float("inf"), "min_cosine": -1.0}
        delta = float(np.abs(ref.astype(np.float64) - out).max(initial=0.0))
        scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
        r, o = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
        cos = (r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)).clip(min=1e-12)
        max_abs, worst_cos = max(max_abs, delta / scale), min(worst_cos, float(cos.min(initial=1.0)))
        if precision == "fp32":
            passed &= delta <= FP32_TOLERANCE * scale
    if precision != "fp32":
        passed = worst_cos >= MIN_COSINE[precision]
    return {"passed": bool(passed), "max_abs": max_abs, "min_cosine": worst_cos}


def passes(check: dict[str, Any], precision: Precision) -> bool:
    """The parity rule applied to stored numbers (``max_abs`` is already relative to max |reference|)."""
    if precision == "fp32":
        return float(check.get("max_abs", float("inf"))) <= FP32_TOLERANCE
    return float(check.get("min_cosine", -1.0)) >= MIN_COSINE[precision]
