"""Failure-detection, selective-classification and OOD metrics, exactly as ``shared/specs/metrics.md``.

Conventions: a confidence is "higher = more trustworthy"; for failure detection the positive class is
"prediction is correct". Functions return plain fractions (AURC 0.171..., AUROC 0.738...); tables in the
papers' units (AURC/E-AURC ×1000, the rest ×100) come from ``format_metrics_table``. A metric that is
undefined for the data (e.g. AUROC when every prediction is correct) is returned as ``None``.

Sources: AURC / E-AURC, Geifman et al. 2019 ("Bias-reduced uncertainty estimation for deep neural
classifiers"); FPR95 nearest-TPR rule and stable-sort tie handling follow the TrustVLM reference code;
ECE, Guo et al. 2017 (15 equal-width bins); OOD FPR@95 conventions, MultiOOD / OpenOOD vs. the classic
ID-positive one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

ECE_BINS = 15
# Multiplier that turns a fraction into the papers' table units.
PAPER_UNITS: dict[str, float] = {"aurc": 1000.0, "eaurc": 1000.0}
DEFAULT_PAPER_UNIT = 100.0
REPORT_METRICS: tuple[str, ...] = (
    "accuracy",
    "aurc",
    "eaurc",
    "auroc",
    "fpr95",
    "aupr_success",
    "aupr_error",
)
METRIC_LABELS: dict[str, str] = {
    "accuracy": "ACC",
    "aurc": "AURC",
    "eaurc": "E-AURC",
    "auroc": "AUROC",
    "fpr95": "FPR95",
    "aupr_success": "AUPR-S",
    "aupr_error": "AUPR-E",
    "ece": "ECE",
}
LOWER_IS_BETTER: frozenset[str] = frozenset({"aurc", "eaurc", "fpr95", "ece"})


def check_scores(
    conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(confidences float64, correctness int64) as flat arrays; ``ValueError`` for unequal lengths, no
    sample, NaN/inf confidences or correctness other than 0/1."""
    s = np.asarray(conf, dtype=np.float64).ravel()
    c = np.asarray(correct).ravel()
    if s.shape != c.shape:
        raise ValueError(f"confidence ({s.size}) and correctness ({c.size}) lengths differ")
    if s.size == 0:
        raise ValueError("metrics need at least one sample")
    if not np.isfinite(s).all():
        raise ValueError("confidences contain NaN or infinity")
    if not np.isin(c, (0, 1)).all():
        raise ValueError("correctness must be 0/1 (or boolean)")
    return s, c.astype(np.int64)


def _both_classes(c: np.ndarray) -> bool:
    return 0 < int(c.sum()) < c.size


def accuracy(correct: np.ndarray | Sequence[int]) -> float:
    """Fraction of correct predictions."""
    c = np.asarray(correct).ravel()
    if c.size == 0:
        raise ValueError("accuracy needs at least one sample")
    return float(np.mean(c))


@dataclass(frozen=True)
class RiskCoverageCurve:
    """Selective risk after accepting the k most confident samples, k = 1..n (stable sort order).

    coverage[k-1] = k / n, risk[k-1] = errors among the first k / k, threshold[k-1] = the k-th confidence.
    """

    coverage: np.ndarray
    risk: np.ndarray
    threshold: np.ndarray


def risk_coverage_curve(
    conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]
) -> RiskCoverageCurve:
    """Risk-coverage curve. Samples are sorted by confidence descending with a *stable* sort, so tied
    samples keep their input order (the TrustVLM reference code's behaviour)."""
    s, c = check_scores(conf, correct)
    order = np.argsort(-s, kind="stable")
    k = np.arange(1, s.size + 1)
    errors = np.cumsum(1 - c[order])
    return RiskCoverageCurve(coverage=k / s.size, risk=errors / k, threshold=s[order])


def aurc(conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]) -> float:
    """Area under the risk-coverage curve, (1/n) Σ_k risk_k (Geifman et al., 2019). Lower is better."""
    return float(risk_coverage_curve(conf, correct).risk.mean())


def optimal_aurc(error_rate: float) -> float:
    """AURC of a perfect ranking: r + (1 − r) ln(1 − r) (0 when r = 0)."""
    if error_rate >= 1.0:
        return 1.0
    return error_rate + (1.0 - error_rate) * math.log1p(-error_rate)


def eaurc(conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]) -> float | None:
    """Excess AURC = AURC − AURC*; equals AURC when there is no error, ``None`` when every sample is wrong."""
    s, c = check_scores(conf, correct)
    r = 1.0 - float(c.mean())
    if r >= 1.0:
        return None
    return aurc(s, c) - optimal_aurc(r)


def auroc(conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]) -> float | None:
    """Area under the ROC curve, correct = positive (= sklearn ``roc_auc_score``; ties count one half)."""
    s, c = check_scores(conf, correct)
    return float(roc_auc_score(c, s)) if _both_classes(c) else None


def fpr_at_95_tpr(conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]) -> float | None:
    """FPR95 for failure detection: the FPR at the ROC point whose TPR is nearest 0.95 (argmin |TPR − 0.95|,
    first such point; sklearn ``roc_curve`` with its default threshold dropping, as the reference code)."""
    s, c = check_scores(conf, correct)
    if not _both_classes(c):
        return None
    fpr, tpr, _ = roc_curve(c, s)
    return float(fpr[np.argmin(np.abs(tpr - 0.95))])


def aupr_success(conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]) -> float | None:
    """Area under the precision-recall curve with correct = positive (sklearn average precision)."""
    s, c = check_scores(conf, correct)
    return float(average_precision_score(c, s)) if _both_classes(c) else None


def aupr_error(conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]) -> float | None:
    """Area under the precision-recall curve with errors = positive and decision value −confidence."""
    s, c = check_scores(conf, correct)
    return float(average_precision_score(1 - c, -s)) if _both_classes(c) else None


def expected_calibration_error(
    conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int], n_bins: int = ECE_BINS
) -> float:
    """ECE (Guo et al., 2017): Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| over equal-width bins of [0, 1].

    Bins are (lo, hi], except that a confidence of exactly 0 goes to the first bin. Only meaningful for
    probability-valued confidences (MSP); values outside [0, 1] raise.
    """
    s, c = check_scores(conf, correct)
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("ECE needs probability-valued confidences in [0, 1]")
    bins = np.clip(np.ceil(s * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    acc_sum = np.bincount(bins, weights=c, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=s, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / s.size)


def risk_at_coverage(
    conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int], coverage: float
) -> float:
    """Selective risk when accepting the ⌈coverage · n⌉ most confident samples (stable sort order)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    curve = risk_coverage_curve(conf, correct)
    k = max(1, math.ceil(coverage * curve.risk.size - 1e-9))
    return float(curve.risk[k - 1])


def coverage_at_risk(
    conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int], risk: float
) -> float:
    """Largest coverage k/n on the risk-coverage curve whose selective risk is ≤ ``risk`` (0 if none)."""
    curve = risk_coverage_curve(conf, correct)
    ok = np.flatnonzero(curve.risk <= risk + 1e-12)
    return float(curve.coverage[ok[-1]]) if ok.size else 0.0


def _first_fpr_at_tpr(labels: np.ndarray, decision: np.ndarray, tpr_level: float) -> float:
    fpr, tpr, _ = roc_curve(labels, decision)
    return float(fpr[np.searchsorted(tpr, tpr_level - 1e-12, side="left")])


def _ood_inputs(id_conf: Sequence[float], ood_conf: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    id_s = np.asarray(id_conf, dtype=np.float64).ravel()
    ood_s = np.asarray(ood_conf, dtype=np.float64).ravel()
    if id_s.size == 0 or ood_s.size == 0:
        raise ValueError("OOD metrics need at least one ID and one OOD sample")
    if not (np.isfinite(id_s).all() and np.isfinite(ood_s).all()):
        raise ValueError("confidences contain NaN or infinity")
    return id_s, ood_s


def ood_auroc(id_conf: Sequence[float], ood_conf: Sequence[float]) -> float:
    """AUROC separating ID (high confidence) from OOD; the same under both FPR@95 conventions."""
    id_s, ood_s = _ood_inputs(id_conf, ood_conf)
    labels = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    return float(roc_auc_score(labels, np.r_[id_s, ood_s]))


def ood_fpr95_ood_positive(id_conf: Sequence[float], ood_conf: Sequence[float]) -> float:
    """MultiOOD / OpenOOD FPR@95: OOD = positive, decision −confidence; the fraction of ID samples flagged
    at the first ROC threshold that catches ≥ 95 % of OOD samples."""
    id_s, ood_s = _ood_inputs(id_conf, ood_conf)
    labels = np.r_[np.zeros(id_s.size), np.ones(ood_s.size)]
    return _first_fpr_at_tpr(labels, -np.r_[id_s, ood_s], 0.95)


def ood_fpr95_id_positive(id_conf: Sequence[float], ood_conf: Sequence[float]) -> float:
    """Classic FPR@95: ID = positive; the fraction of OOD samples accepted at the first ROC threshold that
    accepts ≥ 95 % of ID samples."""
    id_s, ood_s = _ood_inputs(id_conf, ood_conf)
    labels = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    return _first_fpr_at_tpr(labels, np.r_[id_s, ood_s], 0.95)


def failure_detection_report(
    conf: np.ndarray | Sequence[float],
    correct: np.ndarray | Sequence[int],
    *,
    probabilities: bool = False,
) -> dict[str, float | int | None]:
    """All failure-detection metrics as plain fractions (``None`` where undefined), plus ``n``.

    Keys: ``REPORT_METRICS`` and ``n``; ``ece`` too when ``probabilities`` (confidences are probabilities).
    """
    s, c = check_scores(conf, correct)
    report: dict[str, float | int | None] = {
        "n": int(s.size),
        "accuracy": accuracy(c),
        "aurc": aurc(s, c),
        "eaurc": eaurc(s, c),
        "auroc": auroc(s, c),
        "fpr95": fpr_at_95_tpr(s, c),
        "aupr_success": aupr_success(s, c),
        "aupr_error": aupr_error(s, c),
    }
    if probabilities:
        report["ece"] = expected_calibration_error(s, c)
    return report


def to_paper_units(metric: str, value: float | None) -> float | None:
    """A fraction in the papers' table units (AURC/E-AURC ×1000, everything else ×100)."""
    return None if value is None else value * PAPER_UNITS.get(metric, DEFAULT_PAPER_UNIT)


def format_metrics_table(
    rows: Mapping[str, Mapping[str, float | int | None]],
    *,
    stds: Mapping[str, Mapping[str, float | int | None]] | None = None,
    metrics: Sequence[str] = REPORT_METRICS,
    precision: int = 2,
) -> str:
    """A plain-text table (one row per score) in the papers' units, with ``± std`` when ``stds`` is given.

    Undefined values print as ``n/a``. The header marks lower-is-better metrics with ↓.
    """

    def cell(row: str, metric: str) -> str:
        value = to_paper_units(metric, _as_float(rows[row].get(metric)))
        if value is None:
            return "n/a"
        text = f"{value:.{precision}f}"
        if stds is not None and row in stds:
            std = to_paper_units(metric, _as_float(stds[row].get(metric)))
            if std is not None:
                text += f" ± {std:.{precision}f}"
        return text

    headers = ["score"] + [
        METRIC_LABELS.get(m, m) + (" ↓" if m in LOWER_IS_BETTER else " ↑") for m in metrics
    ]
    body = [[row] + [cell(row, m) for m in metrics] for row in rows]
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]
    lines = [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in [headers, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _as_float(value: float | int | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
