"""Failure-detection evaluation of TrustVLM against logit baselines (the ``trustserve eval`` tool).

Protocol (TrustVLM, Dong et al., 2025, arXiv 2505.23745; ``shared/specs/trustvlm.md``):
test images come from the dataset's ``test`` split; K-shot support images for the class prototypes are
drawn with a seed from the ``train`` split (disjoint from the test images), once per draw; every score is
judged against its own prediction (argmax z; ŷ* for TrustVLM*) with the metrics of ``metrics.md``.
Results are the mean and sample standard deviation (ddof = 1) over the support draws.

Image encodings are cached on disk by ``app.trust.encoding`` (one ``.npz`` per preset + dataset + split +
limit + seed + inversion), so a second run with other α / T_v / shots re-encodes nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.trust.calibration import tune_trustvlm
from app.trust.datasets import LabelledImages, load_dataset
from app.trust.encoding import EncodingCache, LoadedModel, cache_path
from app.trust.metrics import (
    REPORT_METRICS,
    failure_detection_report,
    format_metrics_table,
    risk_coverage_curve,
)
from app.trust.plots import save_risk_coverage_plot, save_sweep_plot
from app.trust.prototypes import PrototypeBank, draw_support_indices
from app.trust.scores import BASELINE_SCORES, trustvlm_scores
from app.vlm.presets import DEFAULT_MODELS_DIR

log = logging.getLogger(__name__)

DatasetLoader = Callable[..., LabelledImages]
# Scores whose values are probabilities (ECE is reported for them).
PROBABILITY_SCORES = frozenset({"msp", "s_it"})
PLOTTED_SCORES = ("msp", "s_ii", "trustvlm", "trustvlm_star")
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trustserve" / "eval"


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines one evaluation run (stored in the summary JSON)."""

    model: str
    dataset: str
    shots: tuple[int, ...] = (16,)
    draws: int = 3
    test_limit: int | None = 2000
    alpha: float | None = None  # None: the preset's trust.alpha
    visual_temperature: float | None = None  # None: the preset's trust.visual_temperature
    temperature: float = 1.0
    alpha_sweep: tuple[float, ...] = ()
    tv_sweep: tuple[float, ...] = ()
    tune: bool = False
    calib_size: int = 1000
    invert: bool | None = None
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    dtype: str = "auto"
    runtime: str = "auto"  # as TRUSTSERVE_RUNTIME
    precision: str = "fp32"  # as TRUSTSERVE_PRECISION
    calibration_dir: Path | None = None  # int8 calibration images (never the test split)
    models_dir: Path = DEFAULT_MODELS_DIR
    cache_dir: Path | None = DEFAULT_CACHE_DIR

    def __post_init__(self) -> None:
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"shots must be positive integers, got {self.shots}")
        if self.draws < 1:
            raise ValueError(f"draws must be ≥ 1, got {self.draws}")
        temperatures = (self.visual_temperature or 1.0, self.temperature, *self.tv_sweep)
        if min(temperatures) <= 0:
            raise ValueError("temperatures must be > 0")
        if self.tune and self.calib_size < 10:
            raise ValueError("tuning needs a calibration split of at least 10 images")


# ---------------------------------------------------------------------------------------------------------
# Scoring (numpy only; no model)


@dataclass
class EncodedSet:
    """Logits and image-space features of labelled images."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray


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


# ---------------------------------------------------------------------------------------------------------
# The whole run


@dataclass
class EvalResult:
    """What ``run_evaluation`` produced: the summary (JSON-ready), the per-sample record, the tables."""

    summary: dict[str, Any]
    samples: dict[str, Any]
    tables: dict[int, str]
    plots: list[Path] = field(default_factory=list)


def _round(values: np.ndarray, digits: int = 6) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), digits) for v in np.asarray(values, dtype=np.float64)]


def _calibration_indices(train_labels: np.ndarray, exclude: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded calibration subset of the train split, disjoint from every support draw."""
    pool = np.setdiff1d(np.arange(train_labels.size), exclude)
    rng = np.random.default_rng(seed + 10_007)
    return np.sort(rng.choice(pool, size=min(size, pool.size), replace=False))


@dataclass
class EvalInputs:
    """Everything scoring needs, after encoding: test set, support features per (shots, draw), calibration."""

    test: EncodedSet
    support: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # (shots, draw) -> (indices, features)
    support_labels: dict[tuple[int, int], np.ndarray]
    calibration: EncodedSet | None
    class_names: list[str]
    dataset_info: dict[str, Any]
    encode_seconds: float


def encode_inputs(config: EvalConfig, model: LoadedModel, dataset_loader: DatasetLoader) -> EvalInputs:
    """Load the test split (limited) and the train split, draw the supports (and the calibration subset),
    and encode exactly the images needed, reusing the on-disk cache."""
    started = time.perf_counter()
    test_data = dataset_loader(
        config.dataset, "test", invert=config.invert, limit=config.test_limit, seed=config.seed
    )
    train_data = dataset_loader(config.dataset, "train", invert=config.invert)
    if list(test_data.class_names) != list(train_data.class_names):
        raise ValueError("train and test splits disagree on the class names")
    invert_tag = {None: "default", True: "inv", False: "raw"}[config.invert]
    text = model.class_embeddings(test_data.class_names)

    def logits_of(emb: np.ndarray) -> np.ndarray:
        return model.logit_scale * emb.astype(np.float64) @ text.T.astype(np.float64) + model.logit_bias

    test_tag = f"test-limit{config.test_limit}-seed{config.seed}-{invert_tag}"
    test_emb, test_feat = EncodingCache(cache_path(config.cache_dir, model, test_data, test_tag)).lookup(
        model, test_data, np.arange(len(test_data)), config.batch_size, f"encode {config.dataset}/test"
    )
    draws = {
        (k, d): draw_support_indices(train_data.labels, k, config.seed + d)
        for k in config.shots
        for d in range(config.draws)
    }
    needed = np.unique(np.concatenate(list(draws.values())))
    calib_idx = (
        _calibration_indices(train_data.labels, needed, config.calib_size, config.seed)
        if config.tune
        else np.zeros(0, dtype=np.int64)
    )
    train_idx = np.union1d(needed, calib_idx)
    train_emb, train_feat = EncodingCache(
        cache_path(config.cache_dir, model, train_data, f"train-{invert_tag}")
    ).lookup(model, train_data, train_idx, config.batch_size, f"encode {config.dataset}/train")
    row = {int(ix): p for p, ix in enumerate(train_idx)}

    def rows(indices: np.ndarray) -> list[int]:
        return [row[int(i)] for i in indices]

    calibration = None
    if config.tune:
        calibration = EncodedSet(
            logits_of(train_emb[rows(calib_idx)]), train_feat[rows(calib_idx)], train_data.labels[calib_idx]
        )
    return EvalInputs(
        test=EncodedSet(logits_of(test_emb), test_feat, np.asarray(test_data.labels)),
        support={key: (idx, train_feat[rows(idx)]) for key, idx in draws.items()},
        support_labels={key: train_data.labels[idx] for key, idx in draws.items()},
        calibration=calibration,
        class_names=list(test_data.class_names),
        dataset_info={
            "name": config.dataset,
            "class_names": list(test_data.class_names),
            "n_test": len(test_data),
            "n_train": len(train_data),
            "n_calibration": int(calib_idx.size),
            "test_metadata": {k: v for k, v in test_data.metadata.items() if _jsonable(v)},
        },
        encode_seconds=time.perf_counter() - started,
    )


def tune_on_calibration(
    calibration: EncodedSet, prototypes: np.ndarray, has_prototype: np.ndarray, temperature: float
) -> dict[str, tuple[float, float]]:
    """(α, T_v) minimising calibration AURC, for TrustVLM and for TrustVLM* (``tune_trustvlm`` grids)."""
    tuned: dict[str, tuple[float, float]] = {}
    for score in ("trustvlm", "trustvlm_star"):
        result = tune_trustvlm(
            calibration.logits,
            calibration.features,
            prototypes,
            has_prototype,
            calibration.labels,
            score=score,
            temperature=temperature,
        )
        tuned[score] = (result.alpha, result.visual_temperature)
    return tuned


def _plots_for_draw(
    config: EvalConfig,
    run: ScoredRun,
    labels: np.ndarray,
    reports: Mapping[str, Any],
    shots: int,
    out_dir: Path,
) -> Path:
    names = [n for n in PLOTTED_SCORES if reports.get(n) is not None]
    curves = {n: risk_coverage_curve(run.confidences[n], run.predictions[n] == labels) for n in names}
    return save_risk_coverage_plot(
        curves,
        out_dir / f"risk_coverage_{shots}shot.png",
        f"{config.model} on {config.dataset} (test n={labels.size}), {shots}-shot, draw 0",
        aurc={n: float(reports[n]["aurc"]) for n in names},
    )


def _alpha_sweep_plot(
    config: EvalConfig, scores: Mapping[str, Any], shots: int, out_dir: Path
) -> Path | None:
    sweep = {
        a: scores[f"trustvlm[α={a:g}]"]["mean"]["auroc"]
        for a in config.alpha_sweep
        if scores[f"trustvlm[α={a:g}]"]["mean"] and scores[f"trustvlm[α={a:g}]"]["mean"]["auroc"] is not None
    }
    if not sweep:
        return None
    return save_sweep_plot(
        sweep,
        out_dir / f"alpha_sweep_{shots}shot.png",
        xlabel="α",
        ylabel="AUROC (fraction)",
        title=f"TrustVLM AUROC vs α, {config.dataset}, {shots}-shot",
        log_x=True,
    )


def run_evaluation(
    config: EvalConfig,
    *,
    model: LoadedModel | None = None,
    dataset_loader: DatasetLoader = load_dataset,
    out_dir: Path | None = None,
) -> EvalResult:
    """Encode (or read from cache), score every (shots, draw), measure, aggregate; write ``summary.json``,
    ``samples.json``, ``table.txt`` and the PNG plots to ``out_dir`` when given."""
    started = time.perf_counter()
    model = model or LoadedModel.load(
        config.model,
        models_dir=config.models_dir,
        device=config.device,
        dtype=config.dtype,
        runtime=config.runtime,
        precision=config.precision,
        calibration_dir=config.calibration_dir,
    )
    trust_defaults = model.preset.trust
    alpha = trust_defaults.alpha if config.alpha is None else config.alpha
    visual_temperature = (
        trust_defaults.visual_temperature if config.visual_temperature is None else config.visual_temperature
    )
    config = replace(config, alpha=alpha, visual_temperature=visual_temperature)  # as run, for the summary
    inputs = encode_inputs(config, model, dataset_loader)
    test = inputs.test
    num_classes = len(inputs.class_names)

    score_started = time.perf_counter()
    per_shot: dict[int, dict[str, Any]] = {}
    runs_record: list[dict[str, Any]] = []
    plots: list[Path] = []
    for k in config.shots:
        draw_reports, tuned_params = [], []
        for d in range(config.draws):
            indices, features = inputs.support[(k, d)]
            bank = PrototypeBank.from_features(features, inputs.support_labels[(k, d)], num_classes)
            prototypes, mask = bank.prototypes(), bank.has_prototype
            tuned = (
                tune_on_calibration(inputs.calibration, prototypes, mask, config.temperature)
                if inputs.calibration is not None
                else {}
            )
            if tuned:
                tuned_params.append({s: {"alpha": a, "visual_temperature": t} for s, (a, t) in tuned.items()})
            run = score_run(
                test,
                prototypes,
                mask,
                alpha=alpha,
                visual_temperature=visual_temperature,
                temperature=config.temperature,
                alpha_sweep=config.alpha_sweep,
                tv_sweep=config.tv_sweep,
                tuned=tuned,
            )
            reports = reports_for(run, test.labels)
            draw_reports.append(reports)
            runs_record.append(
                {
                    "shots": k,
                    "draw": d,
                    "seed": config.seed + d,
                    "support_indices": indices.tolist(),
                    "refined_prediction": run.predictions["trustvlm_star"].tolist(),
                    "scores": {n: _round(v) for n, v in run.confidences.items() if n not in BASELINE_SCORES},
                }
            )
            if out_dir is not None and d == 0:
                plots.append(_plots_for_draw(config, run, test.labels, reports, k, out_dir))
        per_shot[k] = {"scores": aggregate(draw_reports), "per_draw": draw_reports, "tuned": tuned_params}
        if out_dir is not None and config.alpha_sweep:
            sweep_plot = _alpha_sweep_plot(config, per_shot[k]["scores"], k, out_dir)
            plots += [sweep_plot] if sweep_plot else []
    score_seconds = time.perf_counter() - score_started

    tables = {
        k: format_metrics_table(
            {n: s["mean"] for n, s in per_shot[k]["scores"].items() if s["mean"] is not None},
            stds={n: s["std"] for n, s in per_shot[k]["scores"].items() if s["std"] is not None},
            metrics=(*REPORT_METRICS, "ece"),
        )
        for k in config.shots
    }
    prediction = test.logits.argmax(axis=1)
    summary = {
        "config": {
            **asdict(config),
            "models_dir": str(config.models_dir),
            "cache_dir": str(config.cache_dir),
        },
        "model": {
            "preset": model.preset.name,
            "backend": model.backend.name,
            "logit_scale": model.logit_scale,
            "logit_bias": model.logit_bias,
            "templates": list(model.preset.templates),
            "image_space": model.aux.name if model.aux is not None else "vlm (backend's own forward)",
        },
        "dataset": inputs.dataset_info,
        "units": "fractions (tables print AURC/E-AURC ×1000, the rest ×100)",
        "std": "sample standard deviation over support draws (ddof=1)",
        "zero_shot_accuracy": float(np.mean(prediction == test.labels)),
        "results": {str(k): v for k, v in per_shot.items()},
        "timing_s": {
            "encode": round(inputs.encode_seconds, 3),
            "score": round(score_seconds, 3),
            "total": round(time.perf_counter() - started, 3),
        },
    }
    samples = {
        "labels": test.labels.tolist(),
        "prediction": prediction.tolist(),
        "baseline_scores": {
            n: _round(fn(test.logits, config.temperature)) for n, fn in BASELINE_SCORES.items()
        },
        "runs": runs_record,
    }
    result = EvalResult(summary, samples, tables, plots)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def render_tables(result: EvalResult) -> str:
    """The printed report: one table per shot count, in the papers' units, mean ± std over draws."""
    cfg = result.summary["config"]
    lines = [
        f"model {cfg['model']}  dataset {cfg['dataset']}  test n={result.summary['dataset']['n_test']}  "
        f"draws={cfg['draws']}  α={cfg['alpha']:g}  T_v={cfg['visual_temperature']:g}  "
        f"zero-shot accuracy {100 * result.summary['zero_shot_accuracy']:.2f} %",
        "units: ACC/AUROC/FPR95/AUPR/ECE ×100, AURC/E-AURC ×1000; mean ± sample std over support draws",
    ]
    for k, table in result.tables.items():
        lines += ["", f"{k}-shot prototypes", table]
        tuned = result.summary["results"][str(k)]["tuned"]
        if tuned:
            lines.append(f"tuned on the calibration split (per draw): {tuned}")
    return "\n".join(lines)


def write_outputs(result: EvalResult, out_dir: Path) -> None:
    """``summary.json``, ``samples.json`` and ``table.txt`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str))
    (out_dir / "samples.json").write_text(json.dumps(result.samples))
    (out_dir / "table.txt").write_text(render_tables(result) + "\n")
