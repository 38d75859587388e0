"""``trustserve calibrate``: pick a label set's acceptance threshold on a folder of labelled images.

Two ways to run it:
- ``--server URL``: upload the images to a running server (``POST /v1/label-sets/{id}/calibrate``); the
  server stores the result and serves it at once. Use this while a server is running. Progress bars count
  the images encoded and the bytes uploaded.
- otherwise: load the model and the label-set store in this process and write the calibration there —
  the store the server uses (``TRUSTSERVE_DATABASE_URL`` when set: replicas see the change at once;
  else ``--store-dir`` / ``TRUSTSERVE_STORE_DIR``: a server on the same directory sees it at its next
  start). A server that writes the same label set meanwhile gets a version conflict, never a lost update.

The images come from ``imagefolder`` layout (one sub-folder per class, named like the label) or from a
named dataset of ``app.trust.datasets`` (e.g. ``fashion-mnist``).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from app.trust.calibration import DEFAULT_DELTA
from app.trust.conformal import DEFAULT_EPSILON, ConformalMethod
from app.trust.scores import TrustScoreName


def _load_images(source: str, split: str, limit: int | None, seed: int, invert: bool | None):
    from app.trust.datasets import load_dataset

    name = f"imagefolder:{source}" if Path(source).is_dir() else source
    data = load_dataset(name, split, invert=invert, limit=limit, seed=seed)
    labels = [data.class_names[int(i)] for i in data.labels]
    return labels, data.images


def _request_fields(
    target_risk: float | None,
    delta: float,
    target_coverage: float | None,
    tune: bool,
    score: str | None,
    seed: int,
    epsilon: float = DEFAULT_EPSILON,
    conformal_method: str = "lac",
) -> dict[str, str]:
    if (target_risk is None) == (target_coverage is None):
        raise typer.BadParameter("give exactly one of --target-risk or --target-coverage")
    if not 0 < epsilon < 1:
        raise typer.BadParameter("--epsilon must be in (0, 1)")
    fields = {
        "delta": str(delta),
        "tune": str(tune).lower(),
        "seed": str(seed),
        "epsilon": str(epsilon),
        "conformal_method": conformal_method,
    }
    if target_risk is not None:
        fields.update(rule="target_risk", target_risk=str(target_risk))
    else:
        fields.update(rule="target_coverage", target_coverage=str(target_coverage))
    if score is not None:
        fields["score"] = score
    return fields


def _via_server(url: str, api_key: str | None, label_set: str, labels: list[str], images, fields) -> dict:
    """Encode the images as PNG and upload them to a running server, which calibrates and stores the
    result. Progress bars count the images encoded and the bytes uploaded; the server's own work follows."""
    import httpx
    from tqdm import tqdm

    from app.client import TrustServeClient, TrustServeError
    from app.labelsets.remote_cli import byte_progress

    encoded = []
    for image in tqdm(images, total=len(labels), unit="image", desc="encode as PNG", dynamic_ncols=True):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        encoded.append(buf.getvalue())
    try:
        with (
            TrustServeClient(url, api_key=api_key, timeout=600) as client,
            byte_progress(f"upload → {label_set}") as progress,
        ):
            sent = 0

            def uploaded(n: int, total: int | None) -> None:
                nonlocal sent
                sent += n
                progress(n, total)
                if sent == total:
                    tqdm.write("uploaded; the server is calibrating…", file=sys.stderr)

            answer = client.calibrate(label_set, encoded, labels, progress=uploaded, **fields)
    except TrustServeError as exc:
        raise RuntimeError(exc.message) from None
    except httpx.TransportError as exc:
        raise RuntimeError(f"cannot reach {url}: {exc}") from None
    return answer["calibration"]


async def _in_process(
    store_dir: Path | None, model: str | None, label_set: str, labels, images, fields
) -> dict:
    from app.config import Settings
    from app.engine.engine import ClassificationEngine
    from app.errors import TrustserveError
    from app.labelsets.calibration import CalibrationRequest
    from app.labelsets.service import LabelSetService, create_store

    overrides: dict[str, Any] = {
        k: v for k, v in {"store_dir": store_dir, "model": model, "warmup": False}.items() if v is not None
    }
    settings = Settings(**overrides)
    engine = await asyncio.to_thread(ClassificationEngine.load, settings)
    await engine.start()
    service = None
    try:
        service = LabelSetService(create_store(settings), engine, settings)
        report = await service.repository.load_all()
        if label_set in report.failed:
            raise RuntimeError(f"label set {label_set!r} could not be loaded: {report.failed[label_set]}")
        request = CalibrationRequest(
            rule=fields["rule"],
            target_risk=float(fields["target_risk"]) if "target_risk" in fields else None,
            delta=float(fields["delta"]),
            target_coverage=float(fields["target_coverage"]) if "target_coverage" in fields else None,
            tune=fields["tune"] == "true",
            score=fields.get("score"),
            seed=int(fields["seed"]),
            epsilon=float(fields["epsilon"]),
            conformal_method=fields["conformal_method"],
        )
        try:
            view = await service.calibration.calibrate(label_set, labels, list(images), request)
        except TrustserveError as exc:
            raise RuntimeError(exc.message) from None
        assert view.calibration is not None
        return view.calibration.model_dump(mode="json")
    finally:
        if service is not None:
            await service.stop()
        await engine.stop()


def calibrate_command(
    label_set: Annotated[str, typer.Argument(help="label-set id")],
    source: Annotated[str, typer.Argument(help="image folder (one sub-folder per class) or a dataset name")],
    target_risk: Annotated[float | None, typer.Option(help="e.g. 0.1: selective risk ≤ 10 %")] = None,
    delta: Annotated[
        float, typer.Option(help="the risk bound holds with probability ≥ 1 − delta")
    ] = DEFAULT_DELTA,
    target_coverage: Annotated[float | None, typer.Option(help="e.g. 0.8: accept 80 % of images")] = None,
    tune: Annotated[bool, typer.Option(help="tune α / T_v on a held-out half first")] = False,
    score: Annotated[TrustScoreName | None, typer.Option(help="trust score to threshold")] = None,
    split: Annotated[str, typer.Option(help="dataset split (train/test/all)")] = "all",
    limit: Annotated[int | None, typer.Option(help="class-balanced subset of this many images")] = None,
    invert: Annotated[bool | None, typer.Option(help="invert images (dataset default when unset)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the subset and of the tuning split")] = 0,
    epsilon: Annotated[
        float, typer.Option(help="miscoverage ε of the conformal prediction sets")
    ] = DEFAULT_EPSILON,
    conformal_method: Annotated[ConformalMethod, typer.Option(help="lac or aps")] = "lac",
    server: Annotated[
        str | None, typer.Option(help="URL of a running server, e.g. http://127.0.0.1:8000")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TRUSTSERVE_API_KEY", help="admin key")] = None,
    store_dir: Annotated[
        Path | None,
        typer.Option(help="label-set store folder (TRUSTSERVE_STORE_DIR; TRUSTSERVE_DATABASE_URL wins)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="model preset (TRUSTSERVE_MODEL)")] = None,
) -> None:
    """Calibrate a label set's reject rule on labelled images and store it with the label set."""
    fields = _request_fields(
        target_risk, delta, target_coverage, tune, score, seed, epsilon, conformal_method
    )
    try:
        labels, images = _load_images(source, split, limit, seed, invert)
    except ValueError as exc:
        typer.echo(f"cannot read {source!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"calibrating {label_set!r} on {len(labels)} images from {source!r}", err=True)
    try:
        if server is not None:
            result = _via_server(server, api_key, label_set, labels, images, fields)
        else:
            result = asyncio.run(_in_process(store_dir, model, label_set, labels, images, fields))
    except RuntimeError as exc:
        typer.echo(f"calibration failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, indent=2))
