"""Drift statistics between live trust scores and the calibration-time distribution of the same score.

The calibration distribution is kept as a sketch: ``REFERENCE_POINTS`` order statistics at the mid-point
levels (i + ½)/m (``reference_quantiles``), so a label set's reference costs a few kB whatever its
calibration size; the sketch's CDF differs from the calibration sample's by at most 1/(2m) (plus ties).

- KS: the two-sample Kolmogorov-Smirnov statistic D = sup_x |F_live(x) − F_ref(x)|, evaluated at every
  sample point with ``np.searchsorted`` (as ``scipy.stats.ks_2samp`` does; a unit test checks they agree):
  scipy's call costs ≈ 1.3 ms per window, mostly p-value machinery, and this runs for every monitored label
  set at every scrape. Only D is reported: a p-value would treat the sketch as a random sample, which it is
  not.
- PSI (population stability index, e.g. Yurdakul, "Statistical properties of population stability
  index", 2018): Σ_b (l_b − r_b) ln(l_b / r_b) over bins cut at the reference deciles, with live (l) and
  reference (r) bin fractions floored at ``PSI_FLOOR``. The usual reading: < 0.1 stable, 0.1–0.25 moderate
  shift, > 0.25 significant shift.

Undefined scores (NaN) are dropped by the caller; both statistics see finite numbers only.
"""

from __future__ import annotations

import numpy as np

REFERENCE_POINTS = 256
PSI_BINS = 10
PSI_FLOOR = 1e-4


def reference_quantiles(scores: np.ndarray, points: int = REFERENCE_POINTS) -> np.ndarray:
    """``points`` order statistics of the finite scores at levels (i + ½)/points (fewer when there are
    fewer scores: then the sorted scores themselves)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite scores to build a reference distribution from")
    if s.size <= points:
        return s
    return np.quantile(s, (np.arange(points) + 0.5) / points, method="inverted_cdf")


def ks_statistic(live: np.ndarray, reference: np.ndarray) -> float:
    """Two-sample KS statistic D in [0, 1]; NaN when either side is empty."""
    a = np.sort(np.asarray(live, dtype=np.float64).ravel())
    b = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        return float("nan")
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def psi(live: np.ndarray, reference: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``live`` against ``reference`` over the reference's quantile bins;
    NaN when either side is empty. Repeated edges (ties in the reference) merge bins."""
    a, b = np.asarray(live, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    inner = np.unique(np.quantile(b, np.arange(1, bins) / bins))
    ref_frac = np.bincount(np.searchsorted(inner, b, side="right"), minlength=inner.size + 1) / b.size
    live_frac = np.bincount(np.searchsorted(inner, a, side="right"), minlength=inner.size + 1) / a.size
    r = np.maximum(ref_frac, PSI_FLOOR)
    ell = np.maximum(live_frac, PSI_FLOOR)
    return float(np.sum((ell - r) * np.log(ell / r)))
