"""The evaluation's scoring core (numpy only; no model): every score's confidences and judged predictions
for one support draw, failure-detection reports per score and their mean ± sample std over draws
(TrustVLM, Dong et al., 2025, arXiv 2505.23745; metrics of ``shared/specs/metrics.md``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.trust.metrics import failure_detection_report
from app.trust.scores import BASELINE_SCORES, trustvlm_scores

# Scores whose values are probabilities (ECE is reported for them).
PROBABILITY_SCORES = frozenset({"msp", "s_it"})


@dataclass
class EncodedSet:
    """Logits and image-space features of labelled images; ``spaces`` holds every loaded image space's
    features by name (``features`` is the preset's own, ``spaces["own"]``)."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    spaces: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ScoredRun:
    """Every score's confidences and the prediction each one is judged against, for one support draw."""

    confidences: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)


def score_run(
    test: EncodedSet,
    prototypes: np.ndarray,
    has_prototype: np.ndarray,
    *,
    alpha: float,
    visual_temperature: float,
    temperature: float = 1.0,
    alpha_sweep: Sequence[float] = (),
    tv_sweep: Sequence[float] = (),
    tuned: Mapping[str, tuple[float, float]] | None = None,
) -> ScoredRun:
    """All scores for one prototype set: baselines, S_it, S_ii, TrustVLM, TrustVLM* at the fixed (α, T_v),
    plus one column per α of ``alpha_sweep`` (TrustVLM), per T_v of ``tv_sweep`` (TrustVLM*), and the
    tuned (α, T_v) per score in ``tuned`` (column ``<score> (tuned)``)."""
    prediction = test.logits.argmax(axis=1)
    run = ScoredRun({}, {})

    def add(name: str, confidence: np.ndarray, judged: np.ndarray) -> None:
        run.confidences[name] = confidence
        run.predictions[name] = judged

    def trust(a: float, tv: float) -> Any:
        return trustvlm_scores(
            test.logits, test.features, prototypes, has_prototype, a, tv, temperature=temperature
        )

    for name, fn in BASELINE_SCORES.items():
        add(name, fn(test.logits, temperature), prediction)
    main = trust(alpha, visual_temperature)
    add("s_it", main.s_it, prediction)
    add("s_ii", main.s_ii, prediction)
    add("trustvlm", main.trustvlm, prediction)
    add("trustvlm_star", main.trustvlm_star, main.refined_prediction)
    for a in alpha_sweep:
        swept = trust(a, visual_temperature)
        add(f"trustvlm[α={a:g}]", swept.trustvlm, prediction)
        add(f"trustvlm_star[α={a:g}]", swept.trustvlm_star, swept.refined_prediction)
    for tv in tv_sweep:
        swept = trust(alpha, tv)
        add(f"trustvlm_star[T_v={tv:g}]", swept.trustvlm_star, swept.refined_prediction)
    for score, (a, tv) in (tuned or {}).items():
        result = trust(a, tv)
        judged = result.refined_prediction if score == "trustvlm_star" else prediction
        add(f"{score} (tuned)", getattr(result, score), judged)
    return run


def reports_for(run: ScoredRun, labels: np.ndarray) -> dict[str, dict[str, Any] | None]:
    """Failure-detection report per score (``None`` when a score is NaN somewhere: missing prototypes)."""
    reports: dict[str, dict[str, Any] | None] = {}
    for name, conf in run.confidences.items():
        if np.isnan(conf).any():
            reports[name] = None
            continue
        correct = run.predictions[name] == labels
        reports[name] = failure_detection_report(conf, correct, probabilities=name in PROBABILITY_SCORES)
    return reports


def aggregate(per_draw: Sequence[Mapping[str, Mapping[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """Mean and sample std (ddof = 1; 0 for a single draw) over draws, per score and metric; a metric
    undefined in any draw is ``None``."""
    out: dict[str, dict[str, Any]] = {}
    for name in per_draw[0]:
        reports = [d[name] for d in per_draw]
        if any(r is None for r in reports):
            out[name] = {"mean": None, "std": None}
            continue
        mean: dict[str, float | None] = {}
        std: dict[str, float | None] = {}
        for metric in reports[0]:  # type: ignore[union-attr]
            values = [r[metric] for r in reports]  # type: ignore[index]
            if any(v is None for v in values):
                mean[metric] = std[metric] = None
                continue
            arr = np.asarray(values, dtype=np.float64)
            mean[metric] = float(arr.mean())
            std[metric] = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        out[name] = {"mean": mean, "std": std}
    return out
