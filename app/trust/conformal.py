"""Split-conformal prediction sets (Vovk et al., 2005; the split form as in Lei et al., JASA 2018).

A nonconformity score s(x, y) is computed on n labelled calibration images; q̂ is its
⌈(n + 1)(1 − ε)⌉-th smallest value (the finite-sample corrected quantile, level ⌈(n+1)(1−ε)⌉ / n). For a
new image the set is {y : s(x, y) ≤ q̂}. If calibration and test images are exchangeable, the set contains
the true label with probability ≥ 1 − ε (marginally, over the calibration draw and the test image), and
≤ 1 − ε + 1/(n + 1) when scores have no ties (Angelopoulos & Bates, "A Gentle Introduction to Conformal
Prediction", 2021, Sec. 1 and App. D).

Two scores:
- ``lac`` (least ambiguous set-valued classifier, Sadinle, Lei & Wasserman, JASA 2019): s = 1 − p_y. The
  smallest mean set size for a given coverage; sets are {y : p_y ≥ 1 − q̂}.
- ``aps`` (adaptive prediction sets, Romano, Sesia & Candès, NeurIPS 2020) with the randomisation fixed at
  u = 0: s = total mass of the labels more probable than y (y excluded), so the set is the most probable
  labels while the mass before them is ≤ q̂ — never empty (the top label has s = 0). The u = 1 variant
  (y included) is valid too but over-covers badly (0.99 for ε = 0.1 in tests/trust/test_conformal.py).
  Larger sets than LAC, closer to conditional coverage.

LAC sets can be empty (no label is plausible enough): an honest answer for an image unlike any class.

Pure numpy; ``probabilities`` are (B, C) rows summing to 1.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

ConformalMethod = Literal["lac", "aps"]
CONFORMAL_METHODS: tuple[ConformalMethod, ...] = ("lac", "aps")
DEFAULT_EPSILON = 0.1
# Rank ties of probabilities by class index (stable) so set order and APS mass are deterministic.
_TIE_TOLERANCE = 1e-12


class ConformalError(ValueError):
    """Arguments for which no conformal threshold can be fitted."""


class ConformalThreshold(BaseModel):
    """A fitted split-conformal threshold: the set of an image is {y : score(x, y) ≤ threshold}."""

    model_config = ConfigDict(extra="forbid")
    method: ConformalMethod
    epsilon: float = Field(gt=0, lt=1, description="target miscoverage ε")
    threshold: float = Field(description="q̂; 1.0 (every label) when n < 1/ε − 1")
    n: int = Field(ge=1, description="calibration images the quantile was taken over")
    quantile_level: float = Field(description="⌈(n + 1)(1 − ε)⌉ / n, the corrected level (may exceed 1)")
    calibration_coverage: float = Field(description="fraction of calibration sets holding the true label")
    mean_set_size: float = Field(description="mean set size on the calibration images")
    probabilities: str = Field(description="which probabilities the scores are computed from")
    guarantee: str


def corrected_quantile_level(n: int, epsilon: float) -> float:
    """⌈(n + 1)(1 − ε)⌉ / n: the empirical quantile level that gives coverage ≥ 1 − ε on n + 1 points."""
    _check_epsilon(epsilon)
    if n < 1:
        raise ConformalError("conformal calibration needs at least one labelled image")
    return math.ceil((n + 1) * (1 - epsilon) - 1e-9) / n


def conformal_quantile(scores: np.ndarray, epsilon: float) -> float:
    """q̂ = the ⌈(n + 1)(1 − ε)⌉-th smallest calibration score; +inf when that rank exceeds n (too few
    images for ε: the set must be every label)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ConformalError("conformal scores must be a non-empty array of finite numbers")
    rank = math.ceil((s.size + 1) * (1 - epsilon) - 1e-9)  # 1-based
    return float("inf") if rank > s.size else float(s[rank - 1])


def _check_epsilon(epsilon: float) -> None:
    if not 0 < epsilon < 1:
        raise ConformalError(f"epsilon must be in (0, 1), got {epsilon}")


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1 or not np.all(np.isfinite(p)):
        raise ConformalError(f"probabilities must be a finite (B, C) array, got shape {p.shape}")
    return p


def _descending(p: np.ndarray) -> np.ndarray:
    """Per row, class indices by decreasing probability (ties: lower index first)."""
    return np.argsort(-p, axis=1, kind="stable")


def nonconformity(probabilities: np.ndarray, labels: np.ndarray, method: ConformalMethod) -> np.ndarray:
    """s(x_i, y_i) for each row: LAC 1 − p_y; APS Σ_{k ranked above y} p_k."""
    p = _check_probabilities(probabilities)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.shape[0] != p.shape[0] or (y.size and (y.min() < 0 or y.max() >= p.shape[1])):
        raise ConformalError("labels must be one class index per row of probabilities")
    rows = np.arange(p.shape[0])
    if method == "lac":
        return 1.0 - p[rows, y]
    if method == "aps":
        order = _descending(p)
        cumulative = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
        rank_of_y = np.argmax(order == y[:, None], axis=1)
        return cumulative[rows, rank_of_y] - p[rows, y]
    raise ConformalError(f"unknown conformal method {method!r}; use one of {CONFORMAL_METHODS}")


def prediction_sets(probabilities: np.ndarray, threshold: float, method: ConformalMethod) -> list[np.ndarray]:
    """Per image, the class indices whose score is ≤ ``threshold``, most probable first. Both scores grow
    along the descending order, so each set is a prefix of that order."""
    p = _check_probabilities(probabilities)
    order = _descending(p)
    ranked = np.take_along_axis(p, order, axis=1)
    if method == "lac":
        inside = 1.0 - ranked <= threshold + _TIE_TOLERANCE
    elif method == "aps":  # mass of the labels ranked before each label
        inside = np.cumsum(ranked, axis=1) - ranked <= threshold + _TIE_TOLERANCE
    else:
        raise ConformalError(f"unknown conformal method {method!r}; use one of {CONFORMAL_METHODS}")
    sizes = inside.sum(axis=1)
    return [order[i, : sizes[i]] for i in range(p.shape[0])]


def guarantee_text(epsilon: float, n: int, selected_among: int = 1, selection_images: int = 0) -> str:
    """The sentence classify answers carry with each prediction set. ``selected_among`` > 1: the label
    set's settings were chosen among that many candidates — on ``selection_images`` other calibration
    images, disjoint from the n here (the guarantee then holds as stated: the settings are a fixed function
    of data independent of these n images, so exchangeability with them is untouched), or, when
    ``selection_images`` is 0, on these same images (then the bound is only approximate)."""
    text = (
        f"contains the true label with probability ≥ {1 - epsilon:g} (ε = {epsilon:g}, split conformal over "
        f"{n} calibration images) for images exchangeable with the calibration images; marginal over "
        "images, not per image"
    )
    if selected_among > 1 and selection_images > 0:
        text += (
            f"; the label set's settings were selected among {selected_among} candidates on "
            f"{selection_images} other calibration images, disjoint from these"
        )
    elif selected_among > 1:
        text += (
            f"; approximate: the label set's settings were selected among {selected_among} candidates on "
            "these same calibration images"
        )
    return text


def fit_conformal(
    probabilities: np.ndarray,
    labels: np.ndarray,
    epsilon: float = DEFAULT_EPSILON,
    method: ConformalMethod = "lac",
    *,
    probabilities_from: str = "softmax",
    selected_among: int = 1,
    selection_images: int = 0,
) -> ConformalThreshold:
    """Fit q̂ on labelled calibration probabilities (rows must come from the same function as at serve
    time). ``probabilities_from`` names that function for the record; ``selected_among`` /
    ``selection_images``: see ``guarantee_text``."""
    _check_epsilon(epsilon)
    scores = nonconformity(probabilities, labels, method)
    # both scores are ≤ 1, so 1.0 admits every label: a finite stand-in for +inf that survives JSON
    threshold = min(conformal_quantile(scores, epsilon), 1.0)
    n = int(scores.size)
    sets = prediction_sets(probabilities, threshold, method)
    y = np.asarray(labels, dtype=np.int64).ravel()
    covered = np.fromiter((y[i] in s for i, s in enumerate(sets)), dtype=bool, count=n)
    return ConformalThreshold(
        method=method,
        epsilon=float(epsilon),
        threshold=threshold,
        n=n,
        quantile_level=corrected_quantile_level(n, epsilon),
        calibration_coverage=float(covered.mean()),
        mean_set_size=float(np.mean([s.size for s in sets])),
        probabilities=probabilities_from,
        guarantee=guarantee_text(epsilon, n, selected_among, selection_images),
    )


def threshold_sets(probabilities: np.ndarray, threshold: float) -> list[np.ndarray]:
    """The plain softmax-threshold set {y : p_y ≥ threshold} (no guarantee), most probable first; the
    baseline conformal sets are compared with."""
    return prediction_sets(probabilities, 1.0 - threshold, "lac")
