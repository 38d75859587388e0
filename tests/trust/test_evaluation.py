"""Tests for app.trust.evaluation and ``trustserve eval``: real datasets loader (scikit-learn digits) and a
tiny random-weight open_clip model (real code path; its accuracy means nothing), plus the numpy core."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.trust.encoding import LoadedModel
from app.trust.evaluation import (
    EncodedSet,
    EvalConfig,
    aggregate,
    reports_for,
    run_evaluation,
    score_run,
)
from app.trust.metrics import failure_detection_report
from app.trust.prototypes import PrototypeBank
from app.trust.scores import l2_normalize
from tests.conftest import TINY_PRESET


def synthetic_set(n: int = 300, c: int = 4, f: int = 8, seed: int = 0) -> tuple[EncodedSet, PrototypeBank]:
    """Noisy text logits; an image space that knows the label (so TrustVLM must beat MSP)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    centres = l2_normalize(rng.normal(size=(c, f)))
    feats = centres[labels] + 0.4 * rng.normal(size=(n, f))
    logits = 2 * rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    support_labels = np.repeat(np.arange(c), 8)
    support = centres[support_labels] + 0.4 * rng.normal(size=(support_labels.size, f))
    return EncodedSet(logits, feats, labels), PrototypeBank.from_features(support, support_labels, c)


def test_score_run_columns_and_judged_predictions() -> None:
    test, bank = synthetic_set()
    run = score_run(
        test, bank.prototypes(), bank.has_prototype, alpha=1.0, visual_temperature=0.01,
        alpha_sweep=(0.0, 2.0), tv_sweep=(0.1,), tuned={"trustvlm_star": (0.5, 0.05)},
    )  # fmt: skip
    expected = {"msp", "energy", "s_it", "s_ii", "trustvlm", "trustvlm_star", "trustvlm[α=0]",
                "trustvlm_star[α=2]", "trustvlm_star[T_v=0.1]", "trustvlm_star (tuned)"}  # fmt: skip
    assert expected <= set(run.confidences)
    np.testing.assert_allclose(run.confidences["trustvlm[α=0]"], run.confidences["msp"])
    np.testing.assert_array_equal(run.predictions["msp"], test.logits.argmax(1))
    reports = reports_for(run, test.labels)
    # the refined prediction uses the image space, which knows the labels: accuracy must go up
    assert reports["trustvlm_star"]["accuracy"] > reports["msp"]["accuracy"] + 0.1
    assert reports["trustvlm"]["auroc"] > reports["msp"]["auroc"]
    assert "ece" in reports["msp"] and "ece" not in reports["trustvlm"]


def test_missing_prototypes_make_the_score_undefined_not_wrong() -> None:
    test, bank = synthetic_set()
    mask = bank.has_prototype.copy()
    mask[0] = False
    run = score_run(test, bank.prototypes(), mask, alpha=1.0, visual_temperature=0.01)
    reports = reports_for(run, test.labels)
    assert reports["s_ii"] is None and reports["msp"] is not None


def test_aggregate_mean_and_sample_std() -> None:
    a = failure_detection_report([0.9, 0.2, 0.5], [1, 0, 1])
    b = failure_detection_report([0.9, 0.6, 0.5], [1, 0, 1])
    out = aggregate([{"x": a, "y": None}, {"x": b, "y": a}])
    assert out["x"]["mean"]["auroc"] == pytest.approx((a["auroc"] + b["auroc"]) / 2)
    assert out["x"]["std"]["auroc"] == pytest.approx(np.std([a["auroc"], b["auroc"]], ddof=1))
    assert out["y"]["mean"] is None


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        EvalConfig(model="m", dataset="d", shots=(0,))
    with pytest.raises(ValueError):
        EvalConfig(model="m", dataset="d", draws=0)


def test_end_to_end_with_tiny_model_and_cache(tiny_models_dir: Path, tmp_path: Path) -> None:
    config = EvalConfig(
        model=TINY_PRESET, dataset="digits", shots=(1, 2), draws=2, test_limit=20, tune=True, calib_size=20,
        alpha_sweep=(0.0, 1.0), device="cpu", dtype="float32", models_dir=tiny_models_dir,
        cache_dir=tmp_path / "cache", batch_size=32,
    )  # fmt: skip
    torch.manual_seed(0)  # weights not all-wrong on 20 digits (AUROC defined), whatever ran before
    model = LoadedModel.load(TINY_PRESET, models_dir=tiny_models_dir, device="cpu", dtype="float32")
    out = tmp_path / "run"
    first = run_evaluation(config, model=model, out_dir=out)
    summary = json.loads((out / "summary.json").read_text())
    samples = json.loads((out / "samples.json").read_text())
    assert summary["dataset"]["n_test"] == 20 and summary["dataset"]["n_calibration"] == 20
    assert set(summary["results"]) == {"1", "2"}
    scores = summary["results"]["2"]["scores"]
    assert {"msp", "trustvlm", "trustvlm_star", "trustvlm (tuned)", "trustvlm[α=0]"} <= set(scores)
    assert scores["trustvlm[α=0]"]["mean"]["auroc"] == pytest.approx(scores["msp"]["mean"]["auroc"])
    assert len(summary["results"]["2"]["per_draw"]) == 2 and len(summary["results"]["2"]["tuned"]) == 2
    assert len(samples["labels"]) == 20 and len(samples["runs"]) == 4
    assert all(len(r["support_indices"]) == 10 * r["shots"] for r in samples["runs"])
    supports = {tuple(r["support_indices"]) for r in samples["runs"]}
    assert len(supports) == 4  # every (shots, draw) has its own seeded draw
    assert (out / "risk_coverage_2shot.png").stat().st_size > 1000
    assert (out / "alpha_sweep_1shot.png").exists()
    assert "2-shot prototypes" in (out / "table.txt").read_text()
    cached = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 2
    stamps = [f.stat().st_mtime_ns for f in cached]
    # same model, other α: nothing is re-encoded, logit baselines are identical
    second = run_evaluation(EvalConfig(**{**config.__dict__, "alpha": 0.5, "tune": False}), model=model)
    assert [f.stat().st_mtime_ns for f in cached] == stamps
    assert second.samples["baseline_scores"] == first.samples["baseline_scores"]
    assert first.summary["config"]["alpha"] == 1.0  # the tiny preset's trust.alpha (no --alpha given)
    assert second.summary["config"]["alpha"] == 0.5
    # random weights are seeded (the same in every load, so exports stay valid): the same entry is reused;
    # the same weights computed another way (bf16) get their own entry instead of stale encodings
    fresh = LoadedModel.load(TINY_PRESET, models_dir=tiny_models_dir, device="cpu", dtype="float32")
    assert fresh.fingerprint == model.fingerprint
    low = LoadedModel.load(
        TINY_PRESET, models_dir=tiny_models_dir, device="cpu", dtype="bfloat16", runtime="torch"
    )
    assert low.fingerprint != model.fingerprint


def test_cli_runs_and_prints_the_table(tiny_models_dir: Path, tmp_path: Path) -> None:
    import typer

    from app.trust.eval_cli import eval_command

    cli = typer.Typer()
    cli.command("eval")(eval_command)
    cli.command("noop")(lambda: None)  # two commands: ``eval`` must be named, as under ``trustserve``
    args = ["eval", "--model", TINY_PRESET, "--dataset", "digits", "--shots", "1", "--draws", "1",
            "--test-limit", "20", "--device", "cpu", "--dtype", "float32",
            "--models-dir", str(tiny_models_dir), "--no-cache", "--out", str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "1-shot prototypes" in result.output and "AUROC" in result.output
    bad = CliRunner().invoke(cli, [*args[:5], "--shots", "0"])
    assert bad.exit_code != 0
