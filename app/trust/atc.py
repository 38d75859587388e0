"""Average Thresholded Confidence (Garg, Balakrishnan, Lipton, Neyshabur & Sedghi, "Leveraging Unlabeled
Data to Predict Out-of-Distribution Performance", ICLR 2022).

On labelled source data, fit the threshold t for which the fraction of scores below t equals the error
rate: (1/n) Σ 1[s_i < t] = (1/n) Σ 1[ŷ_i ≠ y_i]. On unlabelled target data the estimated accuracy is the
fraction of scores at or above t: (1/m) Σ 1[s_j ≥ t]. The paper uses max-softmax or negative entropy as
s; any confidence works the same way, and trustserve uses the label set's own trust score (the one its
decision threshold is on), judged against the prediction that score judges (ŷ* for TrustVLM*).

Undefined scores (NaN: the predicted class had no prototype) count as the lowest possible score.
"""

from __future__ import annotations

import numpy as np


def _scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    return np.where(np.isnan(s), -np.inf, s)


def fit_atc_threshold(scores: np.ndarray, correct: np.ndarray) -> float:
    """t such that exactly as many calibration scores lie below t as there are errors (ties aside)."""
    s = np.sort(_scores(scores))
    c = np.asarray(correct).ravel().astype(bool)
    if s.size == 0 or s.size != c.size:
        raise ValueError(f"need one correctness flag per score, got {s.size} scores and {c.size} flags")
    errors = int(s.size - c.sum())
    if errors == s.size:  # nothing correct: t above every calibration score
        top = s[-1] if np.isfinite(s[-1]) else 0.0
        return float(np.nextafter(top, np.inf))
    t = float(s[errors])
    return t if np.isfinite(t) else float(np.finfo(np.float64).min)


def atc_estimate(scores: np.ndarray, threshold: float) -> float:
    """Estimated accuracy: the fraction of (unlabelled) scores ≥ the fitted threshold; NaN when empty."""
    s = _scores(scores)
    return float(np.mean(s >= threshold)) if s.size else float("nan")
