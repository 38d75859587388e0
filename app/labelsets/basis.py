"""Whether a label set's calibration still applies to the scores it now serves.

Rule: any change to what the decision score is computed from either invalidates the calibration or is
covered by a stated, tested bound. The decision score is computed from

- the arrays: text embeddings, prototypes (after test-time adaptation), which classes have one — compared
  exactly (sha256): a cache entry that moves a prototype, a class added or removed, an import with other
  vectors, each makes the threshold not apply;
- α, T_v and the score's name, and the model's logit scale and bias — compared exactly;
- the numerics of the towers that run per request (the image tower, and the auxiliary image encoder when
  there is one; the text tower's output is part of the arrays). Same runtime, precision, dtype and device:
  the same numbers. Otherwise only fp32 → fp32 on the CPU is covered: every exported fp32 tower is checked
  against the torch reference at load to ``FP32_TOLERANCE`` (1e-4 max abs on embeddings), and the slow
  test ``tests/vlm/test_runtime_parity_fashion_mnist.py`` shows identical accept/reject decisions on a
  calibrated threshold at that bound (so does ``tests/labelsets/test_calibration_basis.py`` on the tiny
  model in the default run). bf16, int8, another device or a float16 torch tower: the calibration does
  not apply until it is re-run on the new numerics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from app.labelsets.models import CalibrationBasis, CalibrationRecord, TowerNumerics
from app.runtime.types import TowerReport

TEXT_TOWER = "text"  # its output is stored in the label set (covered by the arrays digest)
COVERED_DTYPE = "float32"


def arrays_digest(text_embeddings: np.ndarray, prototypes: np.ndarray, has_prototype: np.ndarray) -> str:
    """sha256 over the arrays the decision score reads (shapes and float32 bytes)."""
    digest = hashlib.sha256()
    for array in (
        np.ascontiguousarray(text_embeddings, dtype=np.float32),
        np.ascontiguousarray(prototypes, dtype=np.float32),
        np.ascontiguousarray(has_prototype, dtype=np.bool_),
    ):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def serving_numerics(towers: Mapping[str, TowerReport]) -> dict[str, TowerNumerics]:
    """The numerics of every tower that runs per request (all but the text tower)."""
    return {
        name: TowerNumerics(
            runtime=report.runtime,
            precision=report.precision,
            dtype=report.dtype,
            device=report.device.split(":")[0],
        )
        for name, report in sorted(towers.items())
        if name != TEXT_TOWER
    }


def numerics_problem(calibrated: Mapping[str, TowerNumerics], now: Mapping[str, TowerNumerics]) -> str | None:
    """Why scores computed on ``now`` are not covered by a threshold chosen on ``calibrated``, or None."""
    if set(calibrated) != set(now):
        return f"the image-path towers changed ({sorted(calibrated)} at calibration, now {sorted(now)})"
    for name in sorted(now):
        then, current = calibrated[name], now[name]
        if then == current:
            continue
        both_fp32_cpu = all(
            t.precision == "fp32" and t.dtype == COVERED_DTYPE and t.device == "cpu" for t in (then, current)
        )
        if not both_fp32_cpu:
            return (
                f"the {name} tower was calibrated on {then.runtime} {then.precision} ({then.dtype}, "
                f"{then.device}) and now runs on {current.runtime} {current.precision} ({current.dtype}, "
                f"{current.device}); only fp32 on the CPU is covered by the runtime parity bound"
            )
    return None


def calibration_problem(
    record: CalibrationRecord,
    basis: CalibrationBasis,
    *,
    alpha: float,
    visual_temperature: float,
    trust_score: str,
) -> str | None:
    """Why ``record`` does not apply to a label set now computing its scores from ``basis`` with these
    settings, or None when it does."""
    if record.basis is None:
        return "it was stored before trustserve recorded what a threshold was computed from"
    if (record.alpha, record.visual_temperature, record.score) != (alpha, visual_temperature, trust_score):
        return "α, T_v or the trust score changed since calibration"
    if record.basis.arrays_sha256 != basis.arrays_sha256:
        return (
            "the prototypes or text embeddings changed since calibration (e.g. test-time adaptation "
            "moved a prototype)"
        )
    if (record.basis.logit_scale, record.basis.logit_bias) != (basis.logit_scale, basis.logit_bias):
        return "the model's logit scale or bias changed since calibration"
    return numerics_problem(record.basis.towers, basis.towers)
