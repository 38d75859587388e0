"""``trustserve calibrate`` (the typer command) in-process on a folder, against a store made over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from app.labelsets.cli import calibrate_command
from app.labelsets.store import DirectoryStore
from tests.labelsets.conftest import colour_image
from tests.support.tiny_model import TINY_PRESET

LABELS = ["red", "green", "blue"]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(calibrate_command)
    return app


def _image_folder(root: Path, per_class: int) -> Path:
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            colour_image(label, 300 + i).save(root / label / f"{i}.png")
    return root


def test_calibrate_folder_in_process(app_factory, tiny_models_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = app_factory()
    assert client.post("/v1/label-sets", json={"id": "colours", "labels": LABELS}).status_code == 201
    files = [("images", (f"{i}.png", _png(colour_image(LABELS[i % 3], i)), "image/png")) for i in range(6)]
    r = client.post(
        "/v1/label-sets/colours/images", files=files, data={"labels": [LABELS[i % 3] for i in range(6)]}
    )
    assert r.status_code == 200, r.text
    client.__exit__(None, None, None)

    folder = _image_folder(tmp_path / "calib", per_class=10)
    monkeypatch.setenv("TRUSTSERVE_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("TRUSTSERVE_MODEL", TINY_PRESET)
    monkeypatch.setenv("TRUSTSERVE_DEVICE", "cpu")
    store_dir = tmp_path / "store"
    torch.manual_seed(0)  # the same random weights as the server that built the label set
    result = CliRunner().invoke(
        _app(),
        ["colours", str(folder), "--target-coverage", "0.5", "--store-dir", str(store_dir),
         "--epsilon", "0.2", "--conformal-method", "aps"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout[result.stdout.index("{") :])
    assert printed["rule"] == "target_coverage" and printed["n"] == 30
    stored = DirectoryStore(store_dir).load("colours").meta.calibration
    assert stored is not None and stored.threshold == pytest.approx(printed["threshold"])
    assert stored.conformal is not None and stored.conformal.method == "aps" and stored.conformal.n == 30
    assert printed["conformal"]["epsilon"] == 0.2 and stored.monitor is not None


def test_calibrate_needs_exactly_one_target(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["colours", str(tmp_path), "--target-risk", "0.1", "--target-coverage", "0.5"]
    )
    assert result.exit_code == 2 and "exactly one" in result.output
    args = ["colours", str(tmp_path), "--target-risk", "0.1", "--epsilon", "1.5"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2 and "epsilon" in result.output


def _png(image) -> bytes:  # type: ignore[no-untyped-def]
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
