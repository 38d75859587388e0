"""Failure-detection evaluation of TrustVLM against logit baselines (the ``trustserve eval`` tool).

Protocol (TrustVLM, Dong et al., 2025, arXiv 2505.23745; ``shared/specs/trustvlm.md``):
test images come from the dataset's ``test`` split; K-shot support images for the class prototypes are
drawn with a seed from the ``train`` split (disjoint from the test images), once per draw; every score is
judged against its own prediction (argmax z; ŷ* for TrustVLM*) with the metrics of ``metrics.md``.
Results are the mean and sample standard deviation (ddof = 1) over the support draws.

This module runs the protocol end to end (``run_evaluation``); its parts live beside it: the run's
settings in ``eval_config``, the encoded inputs (through the on-disk encoding cache, so a second run with
other α / T_v / shots re-encodes nothing) in ``eval_inputs``, the numpy scoring core in ``eval_scoring``,
the self-selected rows and intervals in ``eval_selection``, and the tables, JSON files and plots in
``eval_report``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.trust.datasets import load_dataset
from app.trust.encoding import PRIMARY_SPACE, LoadedModel
from app.trust.eval_config import EvalConfig
from app.trust.eval_inputs import DatasetLoader, encode_inputs
from app.trust.eval_report import EvalResult, plot_alpha_sweep, plot_risk_coverage, write_outputs
from app.trust.eval_scoring import EncodedSet, ScoredRun, aggregate, reports_for, score_run
from app.trust.eval_selection import intervals_against, selected_rows
from app.trust.metrics import REPORT_METRICS, format_metrics_table
from app.trust.prototypes import PrototypeBank
from app.trust.scores import BASELINE_SCORES, trustvlm_scores
from app.trust.selection import DEFAULT_BOOTSTRAP, Candidate

log = logging.getLogger(__name__)


def _round(values: np.ndarray, digits: int = 6) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), digits) for v in np.asarray(values, dtype=np.float64)]


def _add_space_rows(
    run: ScoredRun,
    test: EncodedSet,
    support: EncodedSet,
    num_classes: int,
    extra_spaces: Mapping[str, Any],
    alpha: float,
    visual_temperature: float,
    config: EvalConfig,
) -> None:
    """``s_ii@X``, ``trustvlm@X`` and ``trustvlm_star@X`` at the fixed α for every extra image space X."""
    prediction = test.logits.argmax(axis=1)
    for space in extra_spaces:
        bank = PrototypeBank.from_features(support.spaces[space], support.labels, num_classes)
        result = trustvlm_scores(
            test.logits, test.spaces[space], bank.prototypes(), bank.has_prototype, alpha, visual_temperature,
            temperature=config.temperature,
        )  # fmt: skip
        for score in ("s_ii", "trustvlm", "trustvlm_star"):
            run.confidences[f"{score}@{space}"] = getattr(result, score)
            judged = result.refined_prediction if score == "trustvlm_star" else prediction
            run.predictions[f"{score}@{space}"] = judged


def _tuned_vs_default(runs: list[ScoredRun], labels: np.ndarray, config: EvalConfig) -> dict[str, Any]:
    """``<score> (tuned)`` against ``<score>`` (the default row), paired bootstrap over the test images: is
    the calibration-selected setting worse than the default beyond noise? {score: intervals} (issue 14)."""
    out: dict[str, Any] = {}
    for score in ("trustvlm", "trustvlm_star"):
        tuned = f"{score} (tuned)"
        if not runs or tuned not in runs[0].confidences or score not in runs[0].confidences:
            continue
        pick = (score, tuned)
        out[score] = intervals_against(
            [{n: r.confidences[n] for n in pick} for r in runs],
            [{n: r.predictions[n] for n in pick} for r in runs],
            labels,
            reference=score,
            replicates=config.bootstrap,
            seed=config.seed,
        ).get(tuned)
    return out


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
        policy=config.preprocess,  # type: ignore[arg-type]
        spaces=config.image_spaces,
    )
    alpha_given = config.alpha is not None
    trust_defaults = model.preset.trust
    alpha = trust_defaults.alpha if config.alpha is None else config.alpha
    visual_temperature = (
        trust_defaults.visual_temperature if config.visual_temperature is None else config.visual_temperature
    )
    config = replace(  # as run, for the summary
        config,
        alpha=alpha,
        visual_temperature=visual_temperature,
        preprocess=model.policy,
        image_spaces=tuple(model.spaces),
    )
    inputs = encode_inputs(config, model, dataset_loader)
    test = inputs.test
    num_classes = len(inputs.class_names)

    score_started = time.perf_counter()
    auto_default = not alpha_given and model.preset.trust.selection == "auto"
    per_shot: dict[int, dict[str, Any]] = {}
    runs_record: list[dict[str, Any]] = []
    plots: list[Path] = []
    for k in config.shots:
        draw_reports, selections, draw_runs = [], [], []
        for d in range(config.draws):
            indices, _ = inputs.support[(k, d)]
            support = inputs.support_sets[(k, d)]
            bank = PrototypeBank.from_features(support.features, support.labels, num_classes)
            run = score_run(
                test,
                bank.prototypes(),
                bank.has_prototype,
                alpha=alpha,
                visual_temperature=visual_temperature,
                temperature=config.temperature,
                alpha_sweep=config.alpha_sweep,
                tv_sweep=config.tv_sweep,
            )
            _add_space_rows(
                run, test, support, num_classes, model.extra_spaces, alpha, visual_temperature, config
            )
            calibration = inputs.calibration.get((k, d))
            rows, records = selected_rows(
                test_logits=test.logits,
                test_spaces=test.spaces,
                support=(support.logits, support.labels, support.spaces),
                calibration=(calibration.logits, calibration.labels, calibration.spaces)
                if calibration
                else None,
                num_classes=num_classes,
                spaces=model.spaces,
                default=Candidate(alpha, PRIMARY_SPACE),
                visual_temperature=visual_temperature,
                temperature=config.temperature,
                seed=config.seed + d,
                replicates=min(config.bootstrap, DEFAULT_BOOTSTRAP) or DEFAULT_BOOTSTRAP,
            )
            for name, (conf, judged) in rows.items():
                run.confidences[name], run.predictions[name] = conf, judged
            if auto_default:  # the product default: self-selected; the fixed α keeps its own name
                for score in ("trustvlm", "trustvlm_star"):
                    fixed = f"{score}[α={alpha:g}]"
                    run.confidences[fixed] = run.confidences.pop(score)
                    run.predictions[fixed] = run.predictions.pop(score)
                    run.confidences[score] = run.confidences.pop(f"{score} (auto)")
                    run.predictions[score] = run.predictions.pop(f"{score} (auto)")
                    records[score] = records.pop(f"{score} (auto)")
            selections.append(records)
            draw_runs.append(run)
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
                plots.append(plot_risk_coverage(config, run, test.labels, reports, k, out_dir))
        per_shot[k] = {
            "scores": aggregate(draw_reports),
            "per_draw": draw_reports,
            "selections": selections,
            "vs_msp": intervals_against(
                [r.confidences for r in draw_runs],
                [r.predictions for r in draw_runs],
                test.labels,
                replicates=config.bootstrap,
                seed=config.seed,
            )
            if config.bootstrap
            else {},
            "tuned_vs_default": _tuned_vs_default(draw_runs, test.labels, config) if config.bootstrap else {},
        }
        if out_dir is not None and config.alpha_sweep:
            sweep_plot = plot_alpha_sweep(config, per_shot[k]["scores"], k, out_dir)
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
