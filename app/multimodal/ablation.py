"""The ablation study: train every loss variant (baseline / +ACL / +MFS / ACR / +Feature Mixing) for
several seeds on one dataset, evaluate every score on the test splits, aggregate mean ± std over seeds.

Each (variant, seed) run is a normal checkpoint under ``work_root/<variant>-seed<k>/`` with its metrics in
``metrics.json``; finished runs are skipped when the study is re-run (resumable).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.multimodal.checkpoint import load_checkpoint
from app.multimodal.evaluate import (
    TABLE_METRICS,
    Aggregate,
    Report,
    aggregate_runs,
    evaluate_model,
    markdown_table,
)
from app.multimodal.feature_dataset import load_split, read_info
from app.multimodal.objective import VARIANTS, LossConfig
from app.multimodal.pipeline import ArchitectureOptions, train_checkpoint
from app.multimodal.train import TrainConfig

VARIANT_LABELS = {
    "baseline": "baseline (CE)",
    "acl": "+ACL",
    "mfs": "+MFS",
    "acr": "ACR (ACL+MFS)",
    "feature_mixing": "+Feature Mixing",
}


@dataclass
class AblationResult:
    """runs[variant][seed] = {split: {score: report}, "train_seconds": float, "best_epoch": int}."""

    runs: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def reports(self, variant: str, split: str, score: str) -> list[Report]:
        return [run["splits"][split][score] for run in self.runs[variant].values()]

    def aggregates(
        self, split: str, score: str, metrics: Sequence[str] = TABLE_METRICS
    ) -> dict[str, dict[str, Aggregate]]:
        return {
            VARIANT_LABELS.get(v, v): aggregate_runs(self.reports(v, split, score), metrics)
            for v in self.runs
        }

    def table(self, split: str, score: str = "msp", metrics: Sequence[str] = TABLE_METRICS) -> str:
        return markdown_table(self.aggregates(split, score, metrics), metrics)


def run_ablation(
    dataset_dir: Path,
    work_root: Path,
    *,
    variants: Sequence[str] = VARIANTS,
    seeds: Sequence[int] = (0, 1, 2),
    train_config: TrainConfig,
    loss_overrides: dict[str, Any] | None = None,
    architecture: ArchitectureOptions | None = None,
    splits: Sequence[str] = ("test",),
    progress: bool = True,
) -> AblationResult:
    """Train/evaluate every (variant, seed); reuse runs whose ``metrics.json`` already exists."""
    info = read_info(dataset_dir)
    data = {split: load_split(dataset_dir, split, info) for split in splits}
    result = AblationResult()
    for variant in variants:
        for seed in seeds:
            run_dir = Path(work_root) / f"{variant}-seed{seed}"
            metrics_path = run_dir / "metrics.json"
            if metrics_path.is_file():
                run = json.loads(metrics_path.read_text())
                if set(splits) <= set(run["splits"]):
                    result.runs.setdefault(variant, {})[seed] = run
                    continue
            start = time.perf_counter()
            trained = train_checkpoint(
                dataset_dir,
                run_dir / "checkpoint",
                name=f"{variant}-seed{seed}",
                loss=LossConfig.variant(variant, **(loss_overrides or {})),
                train_config=train_config.model_copy(update={"seed": seed}),
                architecture=architecture,
                work_dir=run_dir / "work",
                progress=progress,
            )
            seconds = time.perf_counter() - start
            model = load_checkpoint(trained.path).model
            run = {
                "variant": variant,
                "seed": seed,
                "train_seconds": seconds,
                "best_epoch": trained.result.best_epoch,
                "splits": {split: evaluate_model(model, data[split]) for split in splits},
            }
            metrics_path.write_text(json.dumps(run, indent=1))
            result.runs.setdefault(variant, {})[seed] = run
    return result
