"""``trustserve eval``: TrustVLM failure-detection evaluation from the command line.

Mount in ``app/cli.py`` with ``app.command("eval")(eval_command)``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from app.trust.datasets import require_dataset_packages
from app.trust.evaluation import DEFAULT_CACHE_DIR, EvalConfig, render_tables, run_evaluation
from app.vlm.presets import DEFAULT_MODELS_DIR


def _floats(text: str | None, option: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{option} takes comma-separated numbers, got {text!r}") from exc


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{option} needs positive integers, got {text!r}")
    return values


def eval_command(
    model: str = typer.Option("offline-conse", help="Model preset name (models/<name>.yaml) or a YAML path."),
    dataset: str = typer.Option(
        "fashion-mnist",
        help="fashion-mnist, animal-mnist, digits, conformal-clip-data or imagefolder:<path>.",
    ),
    shots: str = typer.Option(
        "16", help="Support images per class, comma-separated for an ablation: 1,2,4,8,16."
    ),
    draws: int = typer.Option(3, min=1, help="Independent seeded support draws (mean ± std over them)."),
    test_limit: int = typer.Option(
        2000, min=0, help="Class-balanced test subset size (0 = the whole split)."
    ),
    alpha: float | None = typer.Option(
        None, help="TrustVLM α (weight of the image-space score); default: the preset's trust.alpha."
    ),
    tv: float | None = typer.Option(
        None, help="TrustVLM* visual temperature T_v; default: the preset's trust.visual_temperature."
    ),
    temperature: float = typer.Option(1.0, help="Softmax temperature of the logit baselines and S_it."),
    alpha_sweep: str = typer.Option("", help="Extra TrustVLM columns, one per α, e.g. 0,0.1,0.5,1,2."),
    tv_sweep: str = typer.Option("", help="Extra TrustVLM* columns, one per T_v, e.g. 0.005,0.01,0.1."),
    tune: bool = typer.Option(False, help="Also tune α / T_v on a calibration split of train (disjoint)."),
    calib_size: int = typer.Option(1000, min=10, help="Calibration split size for --tune."),
    invert: bool | None = typer.Option(None, "--invert/--no-invert", help="Override the dataset's default."),
    seed: int = typer.Option(0, help="Seed of the test subset and of support draw 0 (draw d uses seed+d)."),
    batch_size: int = typer.Option(64, min=1, help="Images per model forward."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1 …"),
    dtype: str = typer.Option("auto", help="auto, float32, float16, bfloat16."),
    runtime: str = typer.Option("auto", help="auto, torch, onnxruntime, openvino (as TRUSTSERVE_RUNTIME)."),
    precision: str = typer.Option("fp32", help="fp32, bf16, int8 (as TRUSTSERVE_PRECISION)."),
    calibration_dir: Path | None = typer.Option(None, help="int8 calibration images (never the test split)."),
    models_dir: Path = typer.Option(DEFAULT_MODELS_DIR, help="Model repository with the preset YAMLs."),
    cache_dir: Path = typer.Option(DEFAULT_CACHE_DIR, help="Where image encodings are cached."),
    no_cache: bool = typer.Option(False, help="Do not read or write the encoding cache."),
    out: Path | None = typer.Option(None, help="Write summary.json, samples.json, table.txt and PNGs here."),
) -> None:
    """Measure how well TrustVLM and the logit baselines detect the model's misclassifications."""
    logging.basicConfig(level=logging.WARNING)
    try:
        config = EvalConfig(
            model=model,
            dataset=dataset,
            shots=_ints(shots, "--shots"),
            draws=draws,
            test_limit=test_limit or None,
            alpha=alpha,
            visual_temperature=tv,
            temperature=temperature,
            alpha_sweep=_floats(alpha_sweep, "--alpha-sweep"),
            tv_sweep=_floats(tv_sweep, "--tv-sweep"),
            tune=tune,
            calib_size=calib_size,
            invert=invert,
            seed=seed,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            runtime=runtime,
            precision=precision,
            calibration_dir=calibration_dir,
            models_dir=models_dir,
            cache_dir=None if no_cache else cache_dir,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    require_dataset_packages(dataset)  # before a model is loaded: say at once what to install
    started = time.perf_counter()
    result = run_evaluation(config, out_dir=out)
    typer.echo(render_tables(result))
    timing = result.summary["timing_s"]
    typer.echo(
        f"\nwall time {time.perf_counter() - started:.1f} s (encoding {timing['encode']:.1f} s, "
        f"scoring {timing['score']:.1f} s)" + (f"; results in {out}" if out else "")
    )


if __name__ == "__main__":  # python -m app.trust.eval_cli --help
    typer.run(eval_command)
