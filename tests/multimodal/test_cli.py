"""The multimodal CLI commands, through typer's CliRunner on our own Typer objects."""

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from app.multimodal.checkpoint import load_checkpoint
from app.multimodal.cli import datasets_app, eval_multimodal, train_multimodal

runner = CliRunner()


def _app() -> typer.Typer:
    """Mounted the way app/cli.py mounts them."""
    app = typer.Typer()
    app.command("train-multimodal")(train_multimodal)
    app.command("eval-multimodal")(eval_multimodal)
    app.add_typer(datasets_app, name="datasets")
    return app


def test_train_then_eval_checkpoint_and_timing(feature_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny-acr"
    result = runner.invoke(
        _app(),
        [
            "train-multimodal",
            "--dataset",
            str(feature_dataset),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--n-min",
            "2",
            "--n-max",
            "4",
            "--target-risk",
            "0.3",
            "--work-dir",
            str(tmp_path / "work"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (tmp_path / "work" / "curves.png").is_file()
    config = load_checkpoint(out).config
    assert config.name == "tiny-acr" and config.fusion.outlier_class
    assert config.training["loss"]["acl"] and config.training["loss"]["mfs"]
    assert "msp" in config.validation_metrics["scores"]

    report = tmp_path / "eval.json"
    result = runner.invoke(
        _app(),
        [
            "eval-multimodal",
            "--dataset",
            str(feature_dataset),
            "--checkpoint",
            str(out),
            "--timing",
            "--timing-dims",
            "64",
            "48",
            "--timing-steps",
            "3",
            "--output",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    for label in ("msp", "energy", "max_logit", "neg_entropy", "softmax_variance", "doctor_alpha", "AURC"):
        assert label in result.output
    data = json.loads(report.read_text())
    assert set(data["timing_ms"]) >= {"mfs", "feature_mixing", "np_mix_knn"}
    assert data["checkpoints"][str(out)]["test"]["msp"]["n"] == 36


def test_ablation_runs_requested_variants_and_resumes(feature_dataset: Path, tmp_path: Path) -> None:
    args = [
        "eval-multimodal",
        "--dataset",
        str(feature_dataset),
        "--ablation",
        "--seed",
        "1",
        "--epochs",
        "1",
    ]
    args += ["--variant", "baseline", "--variant", "acr", "--work-dir", str(tmp_path / "runs")]
    args += ["--n-min", "2", "--n-max", "4"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "baseline (CE)" in result.output and "ACR (ACL+MFS)" in result.output
    metrics = tmp_path / "runs" / "acr-seed1" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    assert runner.invoke(_app(), args).exit_code == 0
    assert metrics.stat().st_mtime_ns == stamp  # finished runs are reused, not retrained


def test_bad_arguments_exit_with_messages(feature_dataset: Path, tmp_path: Path) -> None:
    result = runner.invoke(_app(), ["datasets", "build", "mnist", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "unknown dataset" in result.output
    result = runner.invoke(
        _app(), ["train-multimodal", "--dataset", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and "dataset.json" in result.output
    result = runner.invoke(
        _app(),
        [
            "train-multimodal",
            "--dataset",
            str(feature_dataset),
            "--out",
            str(tmp_path / "o"),
            "--variant",
            "x",
        ],
    )
    assert result.exit_code != 0 and "unknown variant" in result.output
