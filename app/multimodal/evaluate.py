"""Evaluation of multimodal classifiers: every baseline confidence score (``app.trust.scores``) with the
failure-detection metrics of ``app.trust.metrics`` (correct = positive), an ablation aggregate
(mean ± std over seeds), and the outlier-synthesis timing comparison (MFS / Feature Mixing vs. an
NP-Mix-style k-NN synthesiser).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from scipy import stats
from scipy.special import softmax

from app.multimodal.feature_dataset import MultimodalSplit
from app.multimodal.model import LateFusionClassifier
from app.multimodal.synthesis import (
    NearestNeighbourMixer,
    mix_features,
    sample_mix_plan,
    sample_swap_plan,
    swap_blocks,
)
from app.multimodal.train import predict_logits
from app.trust.metrics import LOWER_IS_BETTER, METRIC_LABELS, failure_detection_report, to_paper_units
from app.trust.scores import baseline_scores

PROBABILITY_SCORES = frozenset({"msp"})  # ECE is only meaningful for probability-valued confidences
TABLE_METRICS: tuple[str, ...] = ("accuracy", "aurc", "eaurc", "auroc", "fpr95", "ece")

Report = dict[str, float | int | None]


def score_reports(logits: np.ndarray, labels: np.ndarray) -> dict[str, Report]:
    """Failure-detection metrics (plain fractions) of every baseline score on these class logits."""
    correct = (logits.argmax(axis=1) == labels).astype(np.int64)
    return {
        name: failure_detection_report(conf, correct, probabilities=name in PROBABILITY_SCORES)
        for name, conf in baseline_scores(logits).items()
    }


def degeneration_report(
    fused_logits: np.ndarray, unimodal_logits: Mapping[str, np.ndarray], labels: np.ndarray
) -> dict[str, float]:
    """Confidence degeneration (ACR, arXiv 2603.02200): the fused MSP below the largest unimodal MSP.

    MSPs over the C real classes (outlier column dropped, as served). ``rate``: share of samples that
    degenerate; ``mean_gap``: mean over all samples of max(0, max_k MSP_k − MSP_fused) (ACL's quantity
    with the max over branches); ``mean_gap_degenerate``: the gap averaged over degenerate samples only;
    ``rate_on_errors`` / ``rate_on_correct``: the rate among misclassified / correct fused predictions.
    """
    fused = softmax(fused_logits, axis=1).max(axis=1)
    branches = np.max([softmax(z, axis=1).max(axis=1) for z in unimodal_logits.values()], axis=0)
    gap = np.maximum(0.0, branches - fused)
    degenerate = branches > fused
    wrong = fused_logits.argmax(axis=1) != labels

    def share(mask: np.ndarray) -> float:
        return float(degenerate[mask].mean()) if mask.any() else float("nan")

    return {
        "rate": float(degenerate.mean()),
        "mean_gap": float(gap.mean()),
        "mean_gap_degenerate": float(gap[degenerate].mean()) if degenerate.any() else 0.0,
        "rate_on_errors": share(wrong),
        "rate_on_correct": share(~wrong),
    }


def evaluate_model(
    model: LateFusionClassifier, split: MultimodalSplit, batch_size: int = 256
) -> dict[str, Report]:
    """``score_reports`` of the model's fused-head class logits on ``split``."""
    return score_reports(predict_logits(model, split, batch_size), split.labels)


@dataclass
class Aggregate:
    """Mean and sample standard deviation (ddof=1) over runs; ``n`` runs had a defined value."""

    mean: float | None
    std: float | None
    n: int


def aggregate(values: Iterable[float | int | None]) -> Aggregate:
    """Mean ± std of the defined (non-None, non-NaN) values."""
    defined = np.array([float(v) for v in values if v is not None and not np.isnan(float(v))])
    if defined.size == 0:
        return Aggregate(None, None, 0)
    std = float(defined.std(ddof=1)) if defined.size > 1 else 0.0
    return Aggregate(float(defined.mean()), std, int(defined.size))


def aggregate_runs(
    runs: Sequence[Mapping[str, float | int | None]], metrics: Sequence[str]
) -> dict[str, Aggregate]:
    """Per-metric ``Aggregate`` over several runs' reports."""
    return {m: aggregate(run.get(m) for run in runs) for m in metrics}


def markdown_table(
    rows: Mapping[str, Mapping[str, Aggregate]],
    metrics: Sequence[str] = TABLE_METRICS,
    precision: int = 2,
    row_label: str = "variant",
) -> str:
    """A markdown table in the papers' units (AURC/E-AURC ×1000, others ×100), ``mean ± std`` cells."""

    def cell(agg: Aggregate | None, metric: str) -> str:
        if agg is None or agg.mean is None:
            return "n/a"
        mean, std = to_paper_units(metric, agg.mean), to_paper_units(metric, agg.std)
        return f"{mean:.{precision}f} ± {std:.{precision}f}"

    header = [row_label] + [
        f"{METRIC_LABELS.get(m, m)} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, aggs in rows.items():
        lines.append("| " + " | ".join([name] + [cell(aggs.get(m), m) for m in metrics]) + " |")
    return "\n".join(lines)


def paired_difference(
    baseline: Sequence[float | None], variant: Sequence[float | None], metric: str
) -> dict[str, float | int | None]:
    """Per-seed paired differences d_s = variant_s − baseline_s (seeds aligned by position).

    Returns the mean difference, its 95 % Student-t interval (mean ± t_{0.975, n−1} · sd / √n), the
    number of seeds ``n`` and how many improve (``improved``: d < 0 for lower-is-better metrics — ``metric``
    in ``LOWER_IS_BETTER`` or ``"lower"`` — d > 0 otherwise). Seeds where either value is undefined are
    dropped.
    """
    pairs = [(a, b) for a, b in zip(baseline, variant, strict=True) if a is not None and b is not None]
    d = np.array([float(b) - float(a) for a, b in pairs])
    lower = metric == "lower" or metric in LOWER_IS_BETTER
    if d.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "improved": 0}
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else np.nan
    return {
        "mean": float(d.mean()),
        "ci_low": float(d.mean() - half),
        "ci_high": float(d.mean() + half),
        "n": int(d.size),
        "improved": int((d < 0).sum() if lower else (d > 0).sum()),
    }


def time_synthesis(
    dims: tuple[int, int],
    batch_size: int = 16,
    num_classes: int = 10,
    steps: int = 200,
    n_range: tuple[int, int] = (32, 256),
    mix_dims: int = 32,
    bank_size: int = 256,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Mean CPU milliseconds per training step spent synthesising outliers for one batch, per method.

    MFS and Feature Mixing include their index draws and tensor copies; the NP-Mix-style synthesiser
    includes its bank update and both k-NN searches (bank pre-filled, as in steady-state training).
    Embeddings are random: the cost does not depend on their values. Measured as process CPU time with
    one torch and one FAISS thread, so that other jobs on a shared machine do not inflate the numbers.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch_size, dims[0], generator=g)
    b = torch.randn(batch_size, dims[1], generator=g)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    mixer = NearestNeighbourMixer(num_classes, dims[0] + dims[1], bank_size=bank_size, k=k, seed=seed)
    warm = torch.randn(num_classes * bank_size, dims[0] + dims[1], generator=g)
    mixer.update(warm.numpy(), np.repeat(np.arange(num_classes), bank_size))

    def mfs() -> None:
        plan = sample_swap_plan(dims[0], dims[1], *n_range, generator=g)
        swap_blocks(a, b, plan)

    def feature_mixing() -> None:
        mix_features(a, b, sample_mix_plan(dims[0], dims[1], mix_dims, generator=g))

    def np_mix() -> None:
        mixer.synthesise(torch.cat([a, b], dim=1), labels)

    timings = {}
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        for name, fn in (("mfs", mfs), ("feature_mixing", feature_mixing), ("np_mix_knn", np_mix)):
            fn()  # warm-up
            start = time.process_time()
            for _ in range(steps):
                fn()
            timings[name] = (time.process_time() - start) / steps * 1000.0
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)
    return timings
