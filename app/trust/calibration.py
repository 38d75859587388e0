"""Reject rules calibrated on labelled data: target coverage, or target risk with a statistical guarantee.

A rule accepts a prediction when its confidence is ≥ ``threshold``. On a calibration set,
coverage(τ) = fraction accepted and selective risk(τ) = error rate among the accepted.

- ``calibrate_target_coverage``: the highest threshold whose empirical coverage reaches the target.
- ``calibrate_target_risk``: Selection with Guaranteed Risk (SGR; Geifman & El-Yaniv, NeurIPS 2017,
  "Selective classification for deep neural networks", Algorithm 1). A binary search over the sorted
  confidences visits ⌈log2 n⌉ thresholds; at each, the selective risk gets a one-sided Clopper-Pearson
  upper bound at level δ / ⌈log2 n⌉ (the binomial-tail bound B* of the paper); by the union bound, with
  probability ≥ 1 − δ over the calibration draw, the true selective risk of the returned rule is ≤ its
  bound ≤ the target. If no visited threshold meets the target, ``CalibrationError`` says how many
  calibration samples would be needed at the very least.

``tune_trustvlm`` picks TrustVLM's α and T_v on calibration data for the best AURC (metrics.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import beta

from app.trust.metrics import aurc, check_scores
from app.trust.scores import DEFAULT_VISUAL_TEMPERATURE, PrototypeTopK, trustvlm_scores

CalibrationRule = Literal["target_risk", "target_coverage"]
CALIBRATION_RULES: tuple[CalibrationRule, ...] = get_args(CalibrationRule)
DEFAULT_DELTA = 0.05  # the risk guarantee holds with probability ≥ 1 − δ
ALPHA_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
VISUAL_TEMPERATURE_GRID = (0.005, 0.01, 0.02, 0.05, 0.1)


class CalibrationError(ValueError):
    """No threshold meets the request on this calibration set; ``min_samples`` says what would be needed."""

    def __init__(self, message: str, *, min_samples: int | None = None) -> None:
        super().__init__(message)
        self.min_samples = min_samples


class CalibrationResult(BaseModel):
    """A calibrated reject rule: accept when confidence ≥ ``threshold``. Risks and coverage are fractions."""

    model_config = ConfigDict(frozen=True)
    threshold: float = Field(description="accept when score >= threshold")
    rule: CalibrationRule = Field(description="target_risk (SGR, with a guarantee) or target_coverage")
    target: float = Field(description="target selective risk (target_risk) or coverage (target_coverage)")
    delta: float | None = Field(
        None, description="confidence level of the risk guarantee (null for target_coverage)"
    )
    guarantee: str = Field(description="what the rule guarantees on new data, in words")
    coverage: float = Field(description="fraction of calibration images accepted (a fraction, not %)")
    risk: float = Field(description="error rate among accepted calibration images")
    risk_upper_bound: float | None = Field(
        None, description="upper confidence bound on the risk of accepted images (target_risk only)"
    )
    n: int = Field(description="calibration images used to pick the threshold")
    n_accepted: int = Field(description="calibration images accepted at the threshold")

    def accepts(self, confidence: np.ndarray | float) -> np.ndarray:
        """Boolean accept decision(s) under this rule."""
        return np.asarray(confidence, dtype=np.float64) >= self.threshold


class Decision(BaseModel):
    """Accept/reject of one prediction by a calibrated threshold on a trust score (classify answers and
    multimodal answers)."""

    accept: bool | None = Field(description="null when no calibrated rule applies: no decision is pretended")
    threshold: float | None = None
    score: str = Field(description="which confidence the threshold applies to")
    rule: CalibrationRule | None = Field(None, description="target_risk or target_coverage")
    guarantee: str | None = None
    calibrated: bool = Field(description="a calibrated rule judged this prediction")
    applies_to: Literal["prediction", "refined_prediction"] = Field(
        "prediction",
        description="which prediction is accepted or rejected (TrustVLM* judges the refined one)",
    )
    note: str | None = None


def _check(conf: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[int]) -> tuple[np.ndarray, ...]:
    """``app.trust.metrics.check_scores``; an empty set is a ``CalibrationError`` (it needs samples)."""
    if np.size(conf) == 0 and np.size(correct) == 0:
        raise CalibrationError("the calibration set is empty", min_samples=1)
    return check_scores(conf, correct)


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided (1 − δ) Clopper-Pearson upper bound on a binomial error rate from ``errors`` of ``n``."""
    if n <= 0:
        return 1.0
    if errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def sgr_search_steps(n: int) -> int:
    """Number of thresholds SGR's binary search visits on n samples: ⌈log2 n⌉ (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def min_calibration_size(target_risk: float, delta: float) -> int:
    """Smallest calibration size n for which accepting all n with no error gives a Clopper-Pearson bound
    ≤ ``target_risk`` at the union-bound level δ / ⌈log2 n⌉: 1 − (δ/k)^(1/n) ≤ r*. Any smaller set can never
    be certified, whatever the model."""
    _check_risk_args(target_risk, delta)
    n = 1
    while True:
        needed = math.ceil(math.log(delta / sgr_search_steps(n)) / math.log1p(-target_risk) - 1e-12)
        if needed <= n:
            return n
        n = needed


def _check_risk_args(target_risk: float, delta: float) -> None:
    if not 0.0 < target_risk < 1.0:
        raise ValueError(f"target_risk must be in (0, 1), got {target_risk}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def calibrate_target_risk(
    conf: np.ndarray | Sequence[float],
    correct: np.ndarray | Sequence[int],
    target_risk: float,
    delta: float = DEFAULT_DELTA,
) -> CalibrationResult:
    """SGR (Geifman & El-Yaniv, 2017): the largest-coverage visited threshold whose selective-risk upper
    bound (Clopper-Pearson at δ / ⌈log2 n⌉) is ≤ ``target_risk``.

    Raises ``CalibrationError`` when not even the most confident samples certify the target (never picks
    a threshold silently); its ``min_samples`` is ``min_calibration_size(target_risk, delta)``.
    """
    _check_risk_args(target_risk, delta)
    s, c = _check(conf, correct)
    n = s.size
    steps = sgr_search_steps(n)
    level = delta / steps
    ascending = np.sort(s, kind="stable")

    def evaluate(index: int) -> tuple[float, int, int, float]:
        theta = float(ascending[index])
        accepted = s >= theta
        m = int(accepted.sum())
        errors = int((1 - c[accepted]).sum())
        return theta, m, errors, clopper_pearson_upper(errors, m, level)

    best: tuple[float, int, int, float] | None = None
    lo, hi = 0, n - 1
    for _ in range(steps):
        mid = math.ceil((lo + hi) / 2)
        candidate = evaluate(mid)
        if candidate[3] <= target_risk:
            hi = mid
            if best is None or candidate[1] > best[1]:
                best = candidate
        else:
            lo = mid
    # When every visited bound fails, the search ends at index n − 1 (the most confident sample alone).
    if best is None:
        needed = min_calibration_size(target_risk, delta)
        raise CalibrationError(
            f"cannot certify selective risk ≤ {target_risk:g} at δ = {delta:g} with {n} calibration samples: "
            f"even the most confident predictions have a risk upper bound above the target. With a perfect "
            f"ranking and no errors this needs at least {needed} samples (bound level δ/⌈log2 n⌉); use more "
            f"calibration data, a larger target risk or δ, or reject everything.",
            min_samples=needed,
        )
    theta, m, errors, bound = best
    return CalibrationResult(
        threshold=theta,
        rule="target_risk",
        target=target_risk,
        delta=delta,
        guarantee=(
            f"With probability ≥ {1 - delta:g} over the draw of the {n} calibration samples, the error "
            f"rate among accepted predictions (confidence ≥ {theta:.6g}) on new data from the same "
            f"distribution is ≤ {bound:.4f} ≤ target {target_risk:g} (SGR, Geifman & El-Yaniv 2017; "
            f"Clopper-Pearson bound at δ/{steps} for {steps} binary-search steps)."
        ),
        coverage=m / n,
        risk=errors / m,
        risk_upper_bound=bound,
        n=n,
        n_accepted=m,
    )


def calibrate_target_coverage(
    conf: np.ndarray | Sequence[float],
    correct: np.ndarray | Sequence[int],
    target_coverage: float,
) -> CalibrationResult:
    """The highest threshold whose empirical coverage is ≥ ``target_coverage`` (i.e. the k-th largest
    confidence, k = ⌈target · n⌉; ties at the threshold are all accepted).

    Guarantee (rank argument, exchangeable data): a new sample is accepted with probability ≥ k / (n + 1).
    There is no risk guarantee.
    """
    if not 0.0 < target_coverage <= 1.0:
        raise ValueError(f"target_coverage must be in (0, 1], got {target_coverage}")
    s, c = _check(conf, correct)
    n = s.size
    k = max(1, math.ceil(target_coverage * n - 1e-9))
    theta = float(np.sort(s)[::-1][k - 1])
    accepted = s >= theta
    m = int(accepted.sum())
    return CalibrationResult(
        threshold=theta,
        rule="target_coverage",
        target=target_coverage,
        guarantee=(
            f"Accepts {m} of {n} calibration samples (coverage {m / n:.4f} ≥ target {target_coverage:g}); "
            f"for a new exchangeable sample the acceptance probability is ≥ {k}/{n + 1} = {k / (n + 1):.4f}. "
            f"No guarantee on the error rate of accepted predictions."
        ),
        coverage=m / n,
        risk=float((1 - c[accepted]).mean()),
        n=n,
        n_accepted=m,
    )


class TuningResult(BaseModel):
    """Best (α, T_v) for a TrustVLM score by calibration AURC. ``tuned`` names the parameters the search
    chose (T_v only for TrustVLM*: TrustVLM does not depend on it, and keeps the one it was given);
    ``grid`` holds every tried point (the evidence)."""

    score: str
    alpha: float
    visual_temperature: float
    tuned: tuple[str, ...]
    aurc: float
    grid: list[dict[str, float]]


def tune_trustvlm(
    logits: np.ndarray,
    image_features: np.ndarray,
    prototypes: np.ndarray,
    has_prototype: np.ndarray,
    labels: np.ndarray,
    *,
    alphas: Sequence[float] = ALPHA_GRID,
    visual_temperatures: Sequence[float] = VISUAL_TEMPERATURE_GRID,
    visual_temperature: float = DEFAULT_VISUAL_TEMPERATURE,
    score: Literal["trustvlm", "trustvlm_star"] = "trustvlm",
    temperature: float = 1.0,
    prototype_topk: PrototypeTopK | None = None,
) -> TuningResult:
    """Grid search minimising AURC on a labelled calibration split: α for both scores, and T_v over
    ``visual_temperatures`` for ``trustvlm_star`` only — κ does not depend on T_v, so for ``trustvlm`` the
    result keeps ``visual_temperature`` (the caller's current one) untouched. Correctness is judged
    against the score's own prediction (ŷ* for TrustVLM*). ``prototype_topk`` makes TrustVLM*'s visual
    softmax the same top-k approximation the server uses for large label sets. Samples whose checked
    class has no prototype make the score NaN and are not allowed here."""
    labels = np.asarray(labels)
    star = score == "trustvlm_star"
    temps = tuple(visual_temperatures) if star else (float(visual_temperature),)
    grid: list[dict[str, float]] = []
    for alpha, tv in itertools.product(alphas, temps):
        result = trustvlm_scores(
            logits,
            image_features,
            prototypes,
            has_prototype,
            alpha,
            tv,
            temperature=temperature,
            prototype_topk=prototype_topk,
        )
        prediction = result.refined_prediction if star else result.prediction
        conf = getattr(result, score)
        if np.isnan(conf).any():
            raise ValueError("some calibration samples' classes have no prototype; cannot tune α on them")
        grid.append(
            {"alpha": float(alpha), "visual_temperature": float(tv), "aurc": aurc(conf, prediction == labels)}
        )
    best = min(grid, key=lambda g: g["aurc"])  # first minimum: the grid's order breaks ties
    return TuningResult(
        score=score,
        alpha=best["alpha"],
        visual_temperature=best["visual_temperature"],
        tuned=("alpha", "visual_temperature") if star else ("alpha",),
        aurc=best["aurc"],
        grid=grid,
    )
