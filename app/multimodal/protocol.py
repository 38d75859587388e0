"""A protocol that can detect a real effect of ACR (arXiv 2603.02200) over cross-entropy.

For one configuration (a dataset + an architecture):

1. **Selection on validation only.** Every variant (baseline CE, +ACL, +MFS, ACR, +Feature Mixing) gets
   the same grid axes where they apply — learning rate for all; λ_acl for the ACL variants; the MFS block
   range (given at the paper's width, n ∈ [32, 256] at 2048-d, and rescaled to the narrower embedding:
   ``LossConfig.n_reference_dim``) for the MFS variants; the entropy weight γ for Feature Mixing — and the
   same training budget (epochs, batch size, optimiser). Each grid point is trained with the *tuning*
   seeds; the point with the lowest mean validation AURC (MSP) is kept. The epoch is chosen on validation
   too: the best-validation-accuracy checkpoint (the later epoch on ties). The test splits are never read
   during selection.
2. **Evaluation.** The chosen point of every variant is trained with the *evaluation* seeds (disjoint from
   the tuning seeds) and scored on the test splits: every baseline score, the failure-detection metrics of
   ``app.trust.metrics``, each head's accuracy, and confidence degeneration (``degeneration_report``).
3. **Paired statistics** (``paired_difference``): per seed, variant − baseline; mean, 95 % t-interval and
   the number of seeds that improve.

Runs are independent jobs (one CPU thread each) spread over ``jobs`` processes; each finished run is a
JSON record in ``work_dir``, so an interrupted protocol resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from app.multimodal.evaluate import degeneration_report, paired_difference, score_reports
from app.multimodal.feature_dataset import MultimodalSplit, load_split, read_info
from app.multimodal.objective import VARIANTS, LossConfig
from app.multimodal.pipeline import ArchitectureOptions, default_fusion_spec
from app.multimodal.train import TrainConfig, predict_head_logits, train_model

PAPER_N_RANGE = (32, 256)  # ACR's best MFS range ...
PAPER_DIM = 2048  # ... at the width of its SlowOnly / SlowFast-slow features
PAIRED_METRICS = ("aurc", "eaurc", "auroc", "fpr95", "accuracy")
SUMMARY_SCORES = ("msp", "energy", "max_logit", "neg_entropy", "doctor")


class Grid(BaseModel):
    """The one grid every variant is selected from (each variant uses the axes that apply to it)."""

    model_config = ConfigDict(extra="forbid")
    lr: list[float] = Field(min_length=1)
    lambda_acl: list[float] = Field(default_factory=lambda: [0.5, 2.0], min_length=1)
    n_range: list[tuple[int, int]] = Field(
        default_factory=lambda: [PAPER_N_RANGE, (128, 1024)],
        min_length=1,
        description="MFS (n_min, n_max) at reference_dim, rescaled to the narrower embedding",
    )
    gamma_mix: list[float] = Field(default_factory=lambda: [0.1, 0.5], min_length=1)
    mix_dims: int = Field(256, ge=1, description="Feature Mixing N at reference_dim, rescaled like n")
    reference_dim: int = Field(PAPER_DIM, ge=1)


class ProtocolConfig(BaseModel):
    """One configuration of the benchmark: data, architecture, training budget, grid and seeds."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    dataset: Path
    architecture: dict[str, Any] = Field(default_factory=dict, description="ArchitectureOptions fields")
    epochs: int = Field(ge=1)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    grid: Grid
    tuning_seeds: list[int] = Field(min_length=1)
    eval_seeds: list[int] = Field(min_length=2)
    variants: list[str] = Field(default_factory=lambda: list(VARIANTS))
    splits: list[str] = Field(default_factory=lambda: ["test", "test_corrupted"])

    def options(self) -> ArchitectureOptions:
        args = dict(self.architecture)
        for key in ("image_channels", "spectrogram_channels", "feature_hidden_dims"):
            if key in args:
                args[key] = tuple(args[key])
        return ArchitectureOptions(**args)


def grid_points(variant: str, grid: Grid) -> list[dict[str, Any]]:
    """The grid points of ``variant``: {"lr": ..., loss overrides...} for every applicable combination."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    points: list[dict[str, Any]] = [{"lr": lr} for lr in grid.lr]
    if variant in ("acl", "acr"):
        points = [{**p, "lambda_acl": lam} for p in points for lam in grid.lambda_acl]
    if variant in ("mfs", "acr"):
        points = [
            {**p, "n_min": lo, "n_max": hi, "n_reference_dim": grid.reference_dim}
            for p in points
            for lo, hi in grid.n_range
        ]
    if variant == "feature_mixing":
        points = [{**p, "gamma_mix": gamma} for p in points for gamma in grid.gamma_mix]
    return points


def point_label(point: dict[str, Any]) -> str:
    """A short readable name of a grid point, e.g. ``lr=0.001,lambda_acl=2.0,n=32-256``."""
    parts = [f"lr={point['lr']:g}"]
    if "lambda_acl" in point:
        parts.append(f"lambda_acl={point['lambda_acl']:g}")
    if "n_min" in point:
        parts.append(f"n={point['n_min']}-{point['n_max']}@{point['n_reference_dim']}")
    if "gamma_mix" in point:
        parts.append(f"gamma={point['gamma_mix']:g}")
    return ",".join(parts)


def _mix_dims(config: ProtocolConfig, dims: Sequence[int]) -> int:
    return max(1, round(config.grid.mix_dims * min(dims) / config.grid.reference_dim))


@lru_cache(maxsize=8)
def _split(dataset: str, split: str) -> MultimodalSplit:
    return load_split(Path(dataset), split)


def _job_key(config: ProtocolConfig, variant: str, point: dict[str, Any], seed: int) -> str:
    recipe = {
        "dataset": str(config.dataset),
        "architecture": config.architecture,
        "budget": [config.epochs, config.batch_size, config.weight_decay],
        "variant": variant,
        "point": point,
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return f"{variant}-{digest}-seed{seed}"


def run_job(
    config: ProtocolConfig, variant: str, point: dict[str, Any], seed: int, work_dir: Path, evaluate: bool
) -> dict[str, Any]:
    """Train one (variant, grid point, seed), evaluate on val (and the test splits when ``evaluate``),
    write the record JSON and return it; an existing record is returned as is."""
    key = _job_key(config, variant, point, seed)
    record_path = Path(work_dir) / "runs" / f"{key}.json"
    if record_path.is_file():
        stored: dict[str, Any] = json.loads(record_path.read_text())
        if not evaluate or "splits" in stored:
            return stored
    info = read_info(config.dataset)
    train, val = _split(str(config.dataset), "train"), _split(str(config.dataset), "val")
    loss_fields = {k: v for k, v in point.items() if k != "lr"}
    loss = LossConfig.variant(variant, **loss_fields)
    spec = default_fusion_spec(info, config.options(), outlier_class=loss.needs_outlier_class)
    dims = [m.embed_dim for m in spec.modalities]
    if variant == "feature_mixing":
        loss = loss.model_copy(update={"mix_dims": _mix_dims(config, dims)})
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=point["lr"],
        weight_decay=config.weight_decay,
        seed=seed,
        num_threads=1,
    )
    run_dir = Path(work_dir) / "work" / key
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train_model(spec, loss, train, val, train_config, run_dir, resume=False, progress=False)
    record: dict[str, Any] = {
        "config": config.name,
        "variant": variant,
        "seed": seed,
        "point": point,
        "point_label": point_label(point),
        "loss": loss.model_dump(),
        "embed_dims": dims,
        "mfs_n_range": list(loss.mfs_n_range(*dims[:2])) if loss.mfs else None,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,
        "val": _evaluate_split(result.model, val),
    }
    if evaluate:
        record["splits"] = {
            split: _evaluate_split(result.model, _split(str(config.dataset), split))
            for split in config.splits
        }
    shutil.rmtree(run_dir / "work", ignore_errors=True)
    for name in ("last_state.safetensors", "last_state.json", "best.safetensors"):
        (run_dir / name).unlink(missing_ok=True)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(record_path)
    return record


def _evaluate_split(model: Any, split: MultimodalSplit) -> dict[str, Any]:
    fused, unimodal = predict_head_logits(model, split)
    reports = score_reports(fused, split.labels)
    return {
        "scores": {name: reports[name] for name in SUMMARY_SCORES if name in reports},
        "degeneration": degeneration_report(fused, unimodal, split.labels),
        "unimodal_accuracy": {
            name: float((logits.argmax(1) == split.labels).mean()) for name, logits in unimodal.items()
        },
        "n": len(split),
        "errors": int((fused.argmax(1) != split.labels).sum()),
    }


def _run_all(
    jobs: list[tuple[ProtocolConfig, str, dict[str, Any], int, Path, bool]],
    workers: int,
    desc: str,
    progress: bool,
) -> list[dict[str, Any]]:
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    results: list[dict[str, Any]] = []
    if workers <= 1:
        for job in jobs:
            results.append(run_job(*job))
            bar.update(1)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for record in pool.map(_star_run_job, jobs):
                results.append(record)
                bar.update(1)
    bar.close()
    return results


def _star_run_job(job: tuple[ProtocolConfig, str, dict[str, Any], int, Path, bool]) -> dict[str, Any]:
    return run_job(*job)


def select_points(
    records: Sequence[dict[str, Any]], metric: Callable[[dict[str, Any]], float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per variant, the grid point with the lowest mean validation AURC (MSP) over the tuning seeds;
    {variant: {"point": ..., "label": ..., "table": [{label, val_aurc, val_accuracy, n}, ...]}}."""
    metric = metric or (lambda r: r["val"]["scores"]["msp"]["aurc"])
    by_point: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        by_point.setdefault(record["variant"], {}).setdefault(record["point_label"], []).append(record)
    chosen = {}
    for variant, points in by_point.items():
        table = [
            {
                "label": label,
                "point": runs[0]["point"],
                "val_aurc": float(np.mean([metric(r) for r in runs])),
                "val_accuracy": float(np.mean([r["val"]["scores"]["msp"]["accuracy"] for r in runs])),
                "n": len(runs),
            }
            for label, runs in points.items()
        ]
        table.sort(key=lambda row: row["val_aurc"])
        chosen[variant] = {"point": table[0]["point"], "label": table[0]["label"], "table": table}
    return chosen


def paired_summary(
    runs: dict[str, dict[int, dict[str, Any]]], split: str, baseline: str = "baseline", score: str = "msp"
) -> dict[str, dict[str, Any]]:
    """Per variant ≠ baseline: ``paired_difference`` over the common seeds for every paired metric
    (score ``score``) and for the degeneration rate and mean gap."""
    out: dict[str, dict[str, Any]] = {}
    for variant, by_seed in runs.items():
        if variant == baseline or baseline not in runs:
            continue
        seeds = sorted(set(by_seed) & set(runs[baseline]))
        rows: dict[str, Any] = {}
        for metric in PAIRED_METRICS:
            a = [runs[baseline][s]["splits"][split]["scores"][score][metric] for s in seeds]
            b = [by_seed[s]["splits"][split]["scores"][score][metric] for s in seeds]
            rows[metric] = paired_difference(a, b, metric)
        for metric in ("rate", "mean_gap"):
            a = [runs[baseline][s]["splits"][split]["degeneration"][metric] for s in seeds]
            b = [by_seed[s]["splits"][split]["degeneration"][metric] for s in seeds]
            rows[f"degeneration_{metric}"] = paired_difference(a, b, "lower")
        out[variant] = rows
    return out


def run_protocol(
    config: ProtocolConfig, work_dir: Path, workers: int = 2, progress: bool = True
) -> dict[str, Any]:
    """Select every variant's grid point on validation, evaluate it over the evaluation seeds, and
    return {"config", "selection", "runs" (variant → seed → record), "paired" (split → variant → ...),
    "seconds"}; the same dictionary is written to ``work_dir/results.json``."""
    work_dir = Path(work_dir) / config.name
    start = time.perf_counter()
    tuning = [
        (config, variant, point, seed, work_dir, False)
        for variant in config.variants
        for point in grid_points(variant, config.grid)
        for seed in config.tuning_seeds
    ]
    selection = select_points(_run_all(tuning, workers, f"{config.name}: grid on val", progress))
    evaluation = [
        (config, variant, selection[variant]["point"], seed, work_dir, True)
        for variant in config.variants
        for seed in config.eval_seeds
    ]
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for record in _run_all(evaluation, workers, f"{config.name}: evaluation seeds", progress):
        runs.setdefault(record["variant"], {})[record["seed"]] = record
    results = {
        "config": json.loads(config.model_dump_json()),
        "selection": selection,
        "runs": runs,
        "paired": {split: paired_summary(runs, split) for split in config.splits},
        "seconds": time.perf_counter() - start,
        "runs_trained": len(tuning) + len(evaluation),
    }
    (work_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results
