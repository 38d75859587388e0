"""Command-line entry points of the multimodal package (mounted by ``app/cli.py``):

- ``trustserve datasets build av-digits --out data/av-digits --seed 0``
- ``trustserve train-multimodal --dataset data/av-digits --out models/multimodal/av-digits-acr --variant acr``
- ``trustserve eval-multimodal --dataset data/av-digits --checkpoint models/multimodal/av-digits-acr``
- ``trustserve eval-multimodal --dataset data/av-digits --ablation --seeds 0 1 2 --timing``
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from app.multimodal.ablation import run_ablation
from app.multimodal.av_digits import build_av_digits
from app.multimodal.checkpoint import CheckpointError, load_checkpoint
from app.multimodal.evaluate import TABLE_METRICS, Aggregate, evaluate_model, markdown_table, time_synthesis
from app.multimodal.feature_dataset import DatasetFormatError, load_split, read_info
from app.multimodal.objective import VARIANTS, LossConfig
from app.multimodal.pipeline import ArchitectureOptions, train_checkpoint
from app.multimodal.protocol import ProtocolConfig, run_protocol
from app.multimodal.train import TrainConfig
from app.trust.calibration import DEFAULT_DELTA

DATASETS = ("av-digits",)
datasets_app = typer.Typer(
    help="Build benchmark datasets reproducibly on this machine.", no_args_is_help=True
)


@datasets_app.callback()
def _datasets() -> None:
    """Build benchmark datasets reproducibly on this machine."""


@datasets_app.command("build")
def build_dataset(
    name: Annotated[str, typer.Argument(help=f"dataset to build: {', '.join(DATASETS)}")],
    out: Annotated[Path | None, typer.Option(help="output folder (default ./data/<name>)")] = None,
    seed: Annotated[int, typer.Option(help="seed of every random choice (voices, pairs, splits, noise)")] = 0,
    clips_per_digit: Annotated[int, typer.Option(min=5, help="espeak-ng utterances per digit")] = 60,
    pairs_per_image: Annotated[int, typer.Option(min=1, help="audio pairings per training image")] = 2,
    eval_pairs_per_image: Annotated[
        int | None, typer.Option(min=1, help="audio pairings per val/test image (default: --pairs-per-image)")
    ] = None,
    pretrained_out: Annotated[
        Path | None,
        typer.Option(
            help="also write the same pairs as frozen pretrained features (EfficientNet-Lite0, "
            "speech_embedding) to this folder"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="parallel espeak-ng processes")] = 2,
    force: Annotated[bool, typer.Option(help="rebuild even if the folder already holds the dataset")] = False,
) -> None:
    """Build a dataset into a cache folder (skipped when already built, unless --force)."""
    if name not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}", param_hint="NAME")
    out = out or Path("data") / name
    built = (out / "dataset.json").is_file()
    if built and (pretrained_out is None or (pretrained_out / "dataset.json").is_file()) and not force:
        typer.echo(f"{out} already holds {name} (use --force to rebuild)")
        return
    start = time.perf_counter()
    build_av_digits(
        out,
        seed=seed,
        clips_per_digit=clips_per_digit,
        pairs_per_image=pairs_per_image,
        eval_pairs_per_image=eval_pairs_per_image,
        workers=workers,
        pretrained_out=pretrained_out,
    )
    info = json.loads((out / "dataset.json").read_text())
    typer.echo(f"built {name} in {time.perf_counter() - start:.1f} s → {out}: {json.dumps(info['splits'])}")


def _loss_config(
    variant: str,
    lambda_acl: float,
    lambda_mfs: float,
    n_min: int,
    n_max: int,
    mix_dims: int,
    gamma_mix: float,
) -> LossConfig:
    if variant not in VARIANTS:
        raise typer.BadParameter(
            f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}", param_hint="--variant"
        )
    return LossConfig.variant(
        variant,
        lambda_acl=lambda_acl,
        lambda_mfs=lambda_mfs,
        n_min=n_min,
        n_max=n_max,
        mix_dims=mix_dims,
        gamma_mix=gamma_mix,
    )


def train_multimodal(
    dataset: Annotated[Path, typer.Option(help="dataset folder (feature-file format or a built av-digits)")],
    out: Annotated[Path, typer.Option(help="checkpoint folder to write (config.json + model.safetensors)")],
    name: Annotated[str | None, typer.Option(help="model name (default: the folder name)")] = None,
    variant: Annotated[str, typer.Option(help=f"loss variant: {', '.join(VARIANTS)}")] = "acr",
    epochs: Annotated[int, typer.Option(min=1, help="ACR reference: 20–50")] = 15,
    batch_size: Annotated[int, typer.Option(min=1, help="ACR reference: 16")] = 32,
    lr: Annotated[
        float, typer.Option(help="Adam learning rate (ACR reference: 1e-4, pretrained backbones)")
    ] = 2e-3,
    weight_decay: Annotated[float, typer.Option()] = 1e-4,
    seed: Annotated[int, typer.Option()] = 0,
    lambda_acl: Annotated[float, typer.Option(help="weight of the Adaptive Confidence Loss")] = 2.0,
    lambda_mfs: Annotated[float, typer.Option(help="weight of the MFS soft-target loss")] = 1.0,
    n_min: Annotated[int, typer.Option(help="MFS smallest swapped block")] = 8,
    n_max: Annotated[int, typer.Option(help="MFS largest swapped block (λ = n / n_max)")] = 32,
    mix_dims: Annotated[int, typer.Option(help="Feature Mixing: dimensions exchanged")] = 16,
    gamma_mix: Annotated[float, typer.Option(help="Feature Mixing: entropy-loss weight")] = 0.5,
    embed_dim: Annotated[int, typer.Option(help="embedding size of CNN encoders")] = 64,
    feature_embed_dim: Annotated[
        int | None, typer.Option(help="feature-vector modalities: adapter width (default: identity)")
    ] = None,
    feature_input_norm: Annotated[
        bool, typer.Option(help="feature-vector modalities: LayerNorm before the adapter")
    ] = False,
    n_reference_dim: Annotated[
        int | None,
        typer.Option(help="MFS: --n-min/--n-max are given at this width and rescaled to the embeddings"),
    ] = None,
    score: Annotated[str, typer.Option(help="confidence score the reject threshold applies to")] = "msp",
    target_risk: Annotated[float, typer.Option(help="calibration: max error rate among accepted")] = 0.05,
    delta: Annotated[
        float, typer.Option(help="calibration: failure probability of the guarantee")
    ] = DEFAULT_DELTA,
    resume: Annotated[bool, typer.Option(help="continue from the last finished epoch if present")] = True,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads")] = 1,
    work_dir: Annotated[
        Path | None, typer.Option(help="training state, curves.png (default runs/train/<name>)")
    ] = None,
) -> None:
    """Train a late-fusion classifier (baseline or ACR variants) and save a servable checkpoint."""
    try:
        read_info(dataset)
    except DatasetFormatError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset") from exc
    loss = _loss_config(variant, lambda_acl, lambda_mfs, n_min, n_max, mix_dims, gamma_mix)
    try:
        loss = LossConfig.model_validate({**loss.model_dump(), "n_reference_dim": n_reference_dim})
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--n-reference-dim") from exc
    train_config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, num_threads=threads
    )
    start = time.perf_counter()
    trained = train_checkpoint(
        dataset,
        out,
        name=name or out.name,
        loss=loss,
        train_config=train_config,
        architecture=ArchitectureOptions(
            embed_dim=embed_dim, feature_embed_dim=feature_embed_dim, feature_input_norm=feature_input_norm
        ),
        score=score,
        target_risk=target_risk,
        delta=delta,
        resume=resume,
        description=f"{variant} on {dataset.name}",
        work_dir=work_dir,
    )
    msp = trained.config.validation_metrics["scores"]["msp"]
    cal = trained.config.calibration
    typer.echo(
        f"trained {trained.config.name} in {time.perf_counter() - start:.1f} s; best epoch "
        f"{trained.result.best_epoch}; val acc {msp['accuracy']:.4f}, AURC×1000 {1000 * msp['aurc']:.2f}; "
        f"threshold {cal.threshold if cal.calibrated else 'not calibrated'} → {out}"
    )


def eval_multimodal(
    dataset: Annotated[Path, typer.Option(help="dataset folder")],
    checkpoint: Annotated[list[Path] | None, typer.Option(help="checkpoint folder(s) to evaluate")] = None,
    splits: Annotated[
        list[str] | None, typer.Option("--split", help="splits (default: test [+ test_corrupted])")
    ] = None,
    ablation: Annotated[bool, typer.Option(help="train and compare every loss variant over --seeds")] = False,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="ablation seeds (default 0 1 2)")] = None,
    variants: Annotated[
        list[str] | None, typer.Option("--variant", help="ablation variants (default all)")
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="ablation runs folder (resumable)")] = Path(
        "runs/acr-ablation"
    ),
    epochs: Annotated[int, typer.Option(min=1)] = 15,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option()] = 2e-3,
    lambda_acl: Annotated[float, typer.Option()] = 2.0,
    acl_detach_unimodal: Annotated[
        bool, typer.Option(help="not in the paper: ACL only raises fused MSP")
    ] = False,
    n_min: Annotated[int, typer.Option()] = 8,
    n_max: Annotated[int, typer.Option()] = 32,
    mix_dims: Annotated[int, typer.Option()] = 16,
    gamma_mix: Annotated[float, typer.Option()] = 0.5,
    timing: Annotated[
        bool, typer.Option(help="time outlier synthesis: MFS, Feature Mixing, NP-Mix-style k-NN")
    ] = False,
    timing_dims: Annotated[tuple[int, int], typer.Option(help="embedding sizes of the two modalities")] = (
        2304,
        2048,
    ),
    timing_steps: Annotated[int, typer.Option(min=1, help="timed steps per method")] = 200,
    output: Annotated[Path | None, typer.Option(help="write all numbers as JSON here")] = None,
) -> None:
    """Failure-detection metrics of every score (MSP, Energy, MaxLogit, neg. entropy, variance, DOCTOR-α)
    for checkpoints, the ACR ablation table (mean ± std over seeds), and synthesis timings."""
    try:
        info = read_info(dataset)
    except DatasetFormatError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset") from exc
    available = {p.stem for p in dataset.glob("*.npz")}
    splits = splits or [s for s in ("test", "test_corrupted") if s in available]
    missing = [s for s in splits if s not in available]
    if missing:
        raise typer.BadParameter(
            f"splits {missing} not in {dataset} (have {sorted(available)})", param_hint="--split"
        )
    report: dict[str, object] = {"dataset": str(dataset), "splits": splits}
    checkpoint_reports: dict[str, object] = {}
    if not (checkpoint or ablation or timing):
        raise typer.BadParameter("give --checkpoint, --ablation and/or --timing")

    for folder in checkpoint or []:
        try:
            model = load_checkpoint(folder).model
        except CheckpointError as exc:
            raise typer.BadParameter(str(exc), param_hint="--checkpoint") from exc
        per_split = {}
        for split in splits:
            reports = evaluate_model(model, load_split(dataset, split, info))
            per_split[split] = reports
            rows = {
                score: {m: Aggregate(r.get(m), 0.0, 1) for m in TABLE_METRICS} for score, r in reports.items()
            }
            typer.echo(f"\n{folder.name} on {split} (AURC/E-AURC ×1000, others ×100; ECE for MSP only)")
            typer.echo(markdown_table(rows, row_label="score").replace(" ± 0.00", ""))
        checkpoint_reports[str(folder)] = per_split
    if checkpoint_reports:
        report["checkpoints"] = checkpoint_reports

    if ablation:
        start = time.perf_counter()
        result = run_ablation(
            dataset,
            work_dir,
            variants=variants or VARIANTS,
            seeds=seeds or [0, 1, 2],
            train_config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr),
            loss_overrides={
                "lambda_acl": lambda_acl,
                "acl_detach_unimodal": acl_detach_unimodal,
                "n_min": n_min,
                "n_max": n_max,
                "mix_dims": mix_dims,
                "gamma_mix": gamma_mix,
            },
            splits=splits,
        )
        for split in splits:
            typer.echo(f"\nablation on {split}, MSP, mean ± std over seeds {seeds or [0, 1, 2]}")
            typer.echo(result.table(split))
        typer.echo(f"\nablation finished in {time.perf_counter() - start:.1f} s")
        report["ablation"] = result.runs

    if timing:
        timings = time_synthesis(timing_dims, steps=timing_steps)
        typer.echo(f"\noutlier synthesis per step, batch 16, dims {timing_dims} (ms): {json.dumps(timings)}")
        for name in ("mfs", "feature_mixing"):
            typer.echo(f"NP-Mix-style k-NN / {name}: {timings['np_mix_knn'] / timings[name]:.0f}×")
        report["timing_ms"] = {"dims": list(timing_dims), **timings}

    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=1, default=str))
        typer.echo(f"wrote {output}")


def fair_protocol(
    config: Annotated[
        list[Path], typer.Option("--config", help="protocol config JSON (benchmarks/acr/configs/*.json)")
    ],
    work_dir: Annotated[Path, typer.Option(help="runs folder (resumable: finished runs are reused)")] = Path(
        "runs/acr-fair"
    ),
    workers: Annotated[int, typer.Option(min=1, help="parallel training processes (one thread each)")] = 2,
    output: Annotated[
        Path | None, typer.Option(help="write every configuration's results here (JSON)")
    ] = None,
) -> None:
    """The fair ACR protocol: one grid selected on validation for every variant, ≥ 10 evaluation seeds,
    paired per-seed statistics and confidence degeneration (``app/multimodal/protocol.py``)."""
    configs = []
    for path in config:
        try:
            configs.append(ProtocolConfig.model_validate_json(path.read_text()))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"{path}: {exc}", param_hint="--config") from exc
    combined: dict[str, object] = {}
    for protocol in configs:
        try:
            read_info(protocol.dataset)
        except DatasetFormatError as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from exc
        results = run_protocol(protocol, work_dir, workers=workers)
        combined[protocol.name] = results
        typer.echo(f"\n{protocol.name}: {results['runs_trained']} runs in {results['seconds']:.0f} s")
        for split in protocol.splits:
            typer.echo(f"\n{protocol.name} / {split}: ACR − CE (MSP), mean [95 % CI], seeds improving")
            for metric, row in results["paired"][split].get("acr", {}).items():
                if row["mean"] is not None:
                    typer.echo(
                        f"  {metric}: {row['mean']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], "
                        f"{row['improved']}/{row['n']}"
                    )
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(combined, indent=1, default=str))
        typer.echo(f"wrote {output}")


def standalone_app() -> typer.Typer:
    """The commands as one Typer app (``python -m app.multimodal.cli ...``) until/besides ``trustserve``."""
    app = typer.Typer(no_args_is_help=True)
    app.add_typer(datasets_app, name="datasets")
    app.command("train-multimodal")(train_multimodal)
    app.command("eval-multimodal")(eval_multimodal)
    app.command("fair-protocol")(fair_protocol)
    return app


if __name__ == "__main__":
    standalone_app()()
