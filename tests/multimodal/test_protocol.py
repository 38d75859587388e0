"""The fair ACR protocol: grid per variant, selection on validation, paired statistics, degeneration."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from app.multimodal.cli import standalone_app
from app.multimodal.evaluate import degeneration_report, paired_difference
from app.multimodal.protocol import Grid, grid_points, point_label, select_points


def test_every_variant_uses_the_axes_that_apply_to_it() -> None:
    grid = Grid(lr=[1e-3, 3e-3], lambda_acl=[0.5, 2.0], n_range=[(32, 256), (128, 1024)], gamma_mix=[0.1])
    counts = {v: len(grid_points(v, grid)) for v in ("baseline", "acl", "mfs", "acr", "feature_mixing")}
    assert counts == {"baseline": 2, "acl": 4, "mfs": 4, "acr": 8, "feature_mixing": 2}
    acr = grid_points("acr", grid)[0]
    assert acr == {"lr": 1e-3, "lambda_acl": 0.5, "n_min": 32, "n_max": 256, "n_reference_dim": 2048}
    assert point_label(acr) == "lr=0.001,lambda_acl=0.5,n=32-256@2048"
    with pytest.raises(ValueError):
        grid_points("dropout", grid)


def _record(variant: str, label: str, aurc: float, acc: float = 0.9) -> dict:
    return {
        "variant": variant,
        "point_label": label,
        "point": {"lr": float(label)},
        "val": {"scores": {"msp": {"aurc": aurc, "accuracy": acc}}},
    }


def test_selection_takes_the_lowest_mean_validation_aurc() -> None:
    records = [
        _record("baseline", "0.001", 0.02),
        _record("baseline", "0.001", 0.04),  # mean 0.03
        _record("baseline", "0.003", 0.025),
        _record("baseline", "0.003", 0.027),  # mean 0.026: chosen
        _record("acr", "0.001", 0.05),
    ]
    chosen = select_points(records)
    assert chosen["baseline"]["label"] == "0.003" and chosen["baseline"]["point"] == {"lr": 0.003}
    assert [row["n"] for row in chosen["baseline"]["table"]] == [2, 2]
    assert chosen["acr"]["table"][0]["val_aurc"] == 0.05


def test_paired_difference_is_a_t_interval_over_seeds() -> None:
    base, variant = [0.010, 0.012, 0.011, 0.015], [0.008, 0.011, 0.012, 0.010]
    d = np.array(variant) - np.array(base)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    row = paired_difference(base, variant, "aurc")
    assert row["mean"] == pytest.approx(d.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["n"] == 4 and row["improved"] == 3  # AURC: lower is better
    assert paired_difference(base, variant, "auroc")["improved"] == 1  # higher is better
    assert paired_difference([0.5, None], [0.6, 0.7], "auroc")["n"] == 1
    assert paired_difference([None], [None], "auroc")["mean"] is None


def test_degeneration_hand_case() -> None:
    fused = np.log(np.array([[0.6, 0.4], [0.9, 0.1], [0.3, 0.7]]))
    image = np.log(np.array([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]))
    audio = np.log(np.array([[0.5, 0.5], [0.5, 0.5], [0.1, 0.9]]))
    report = degeneration_report(fused, {"image": image, "audio": audio}, np.array([0, 0, 0]))
    # sample 0: max branch 0.8 > 0.6 (gap 0.2); sample 1: 0.6 < 0.9; sample 2: 0.9 > 0.7 (gap 0.2)
    assert report["rate"] == pytest.approx(2 / 3)
    assert report["mean_gap"] == pytest.approx(0.4 / 3)
    assert report["mean_gap_degenerate"] == pytest.approx(0.2)
    assert report["rate_on_errors"] == pytest.approx(1.0)  # sample 2 is the only error
    assert report["rate_on_correct"] == pytest.approx(0.5)


def test_fair_protocol_command_end_to_end(feature_dataset: Path, tmp_path: Path) -> None:
    config = {
        "name": "tiny",
        "dataset": str(feature_dataset),
        "architecture": {"feature_hidden_dims": [8], "feature_embed_dim": 8, "feature_input_norm": True},
        "epochs": 2,
        "batch_size": 8,
        "grid": {"lr": [0.01], "lambda_acl": [2.0], "n_range": [[32, 256]], "gamma_mix": [0.5]},
        "tuning_seeds": [100],
        "eval_seeds": [0, 1],
        "variants": ["baseline", "acr"],
        "splits": ["test"],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    args = ["fair-protocol", "--config", str(path), "--work-dir", str(tmp_path / "runs"), "--workers", "1"]
    result = CliRunner().invoke(standalone_app(), [*args, "--output", str(tmp_path / "all.json")])
    assert result.exit_code == 0, result.output
    assert "tiny / test: ACR − CE" in result.output
    results = json.loads((tmp_path / "all.json").read_text())["tiny"]
    assert results["runs_trained"] == 6
    assert set(results["runs"]) == {"baseline", "acr"} and set(results["runs"]["acr"]) == {"0", "1"}
    run = results["runs"]["acr"]["0"]
    assert run["mfs_n_range"] == [1, 1]  # [32, 256] at 2048-d rescaled to the 8-d adapters
    assert {"rate", "mean_gap"} <= set(run["splits"]["test"]["degeneration"])
    assert results["paired"]["test"]["acr"]["aurc"]["n"] == 2
    again = CliRunner().invoke(standalone_app(), args)  # every run is reused from its record
    assert again.exit_code == 0 and "6 runs" in again.output
