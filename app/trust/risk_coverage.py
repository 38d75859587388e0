"""Risk-coverage evidence for one score on labelled images, in a size fit for an answer or a chart: the
curve of ``app.trust.metrics.risk_coverage_curve`` (Geifman et al., 2019) thinned to at most ``max_points``
evenly spaced coverages (the last point, full coverage, always kept), and the operating point of a
threshold rule (accept when score ≥ threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.trust.metrics import aurc, risk_coverage_curve


@dataclass(frozen=True)
class CurvePoint:
    coverage: float
    risk: float
    threshold: float


@dataclass(frozen=True)
class OperatingPoint:
    """What a threshold rule does on these images: coverage, selective risk, accepted count."""

    threshold: float
    coverage: float
    risk: float | None  # None when nothing is accepted
    accepted: int


@dataclass(frozen=True)
class RiskCoverageSummary:
    n: int
    accuracy: float
    aurc: float
    points: list[CurvePoint]


def summarise_risk_coverage(
    conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int], max_points: int
) -> RiskCoverageSummary:
    """Accuracy, AURC and the thinned risk-coverage curve of ``conf`` (higher = more confident)."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    curve = risk_coverage_curve(conf, correct)
    n = curve.coverage.size
    keep = np.unique(np.round(np.linspace(0, n - 1, min(n, max_points))).astype(np.int64))
    points = [
        CurvePoint(float(curve.coverage[k]), float(curve.risk[k]), float(curve.threshold[k])) for k in keep
    ]
    return RiskCoverageSummary(
        n=n, accuracy=float(1.0 - curve.risk[-1]), aurc=aurc(conf, correct), points=points
    )


def operating_point(
    conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int], threshold: float
) -> OperatingPoint:
    """Coverage and selective risk of the rule "accept when conf ≥ threshold" on these images."""
    s = np.asarray(conf, dtype=np.float64).ravel()
    c = np.asarray(correct).ravel().astype(np.int64)
    accepted = s >= threshold
    k = int(accepted.sum())
    risk = float(1.0 - c[accepted].mean()) if k else None
    return OperatingPoint(threshold=float(threshold), coverage=k / s.size, risk=risk, accepted=k)
