"""The evaluation's outputs: ``EvalResult``, the printed tables (with the self-selection and the
intervals against MSP), ``summary.json`` / ``samples.json`` / ``table.txt`` and the PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.trust.eval_config import EvalConfig
from app.trust.eval_scoring import ScoredRun
from app.trust.metrics import risk_coverage_curve
from app.trust.plots import save_risk_coverage_plot, save_sweep_plot

PLOTTED_SCORES = ("msp", "s_ii", "trustvlm", "trustvlm_star", "trustvlm (tuned)", "trustvlm@lite0")


@dataclass
class EvalResult:
    """What ``run_evaluation`` produced: the summary (JSON-ready), the per-sample record, the tables."""

    summary: dict[str, Any]
    samples: dict[str, Any]
    tables: dict[int, str]
    plots: list[Path] = field(default_factory=list)


def plot_risk_coverage(
    config: EvalConfig,
    run: ScoredRun,
    labels: np.ndarray,
    reports: Mapping[str, Any],
    shots: int,
    out_dir: Path,
) -> Path:
    """Risk–coverage curves of the plotted scores for one draw, saved as ``risk_coverage_<shots>shot.png``."""
    names = [n for n in PLOTTED_SCORES if reports.get(n) is not None]
    curves = {n: risk_coverage_curve(run.confidences[n], run.predictions[n] == labels) for n in names}
    return save_risk_coverage_plot(
        curves,
        out_dir / f"risk_coverage_{shots}shot.png",
        f"{config.model} on {config.dataset} (test n={labels.size}), {shots}-shot, draw 0",
        aurc={n: float(reports[n]["aurc"]) for n in names},
    )


def plot_alpha_sweep(config: EvalConfig, scores: Mapping[str, Any], shots: int, out_dir: Path) -> Path | None:
    """TrustVLM's mean AUROC against α over ``config.alpha_sweep`` (``None`` when no α has one)."""
    sweep = {
        a: scores[f"trustvlm[α={a:g}]"]["mean"]["auroc"]
        for a in config.alpha_sweep
        if scores[f"trustvlm[α={a:g}]"]["mean"] and scores[f"trustvlm[α={a:g}]"]["mean"]["auroc"] is not None
    }
    if not sweep:
        return None
    return save_sweep_plot(
        sweep,
        out_dir / f"alpha_sweep_{shots}shot.png",
        xlabel="α",
        ylabel="AUROC (fraction)",
        title=f"TrustVLM AUROC vs α, {config.dataset}, {shots}-shot",
        log_x=True,
    )


def render_tables(result: EvalResult) -> str:
    """The printed report: one table per shot count, in the papers' units, mean ± std over draws."""
    cfg = result.summary["config"]
    lines = [
        f"model {cfg['model']}  dataset {cfg['dataset']}  test n={result.summary['dataset']['n_test']}  "
        f"draws={cfg['draws']}  α={cfg['alpha']:g}  T_v={cfg['visual_temperature']:g}  "
        f"preprocess={cfg['preprocess']}  spaces={','.join(cfg['image_spaces'])}  "
        f"zero-shot accuracy {100 * result.summary['zero_shot_accuracy']:.2f} %",
        "units: ACC/AUROC/FPR95/AUPR/ECE ×100, AURC/E-AURC ×1000; mean ± sample std over support draws",
    ]
    for k, table in result.tables.items():
        lines += ["", f"{k}-shot prototypes", table]
        lines += _selection_lines(result.summary["results"][str(k)])
    return "\n".join(lines)


def _selection_lines(results: Mapping[str, Any]) -> list[str]:
    """What the self-selection chose per draw, and every row against MSP with its interval."""
    lines = ["", "self-selected (per draw: chosen candidate; evidence, samples; fallback if any):"]
    for row in results["selections"][0] if results["selections"] else []:
        picks = []
        for draw in results["selections"]:
            sel = draw[row]
            picks.append(f"{sel['chosen']}" + (" (fallback)" if sel["fallback"] else ""))
        first = results["selections"][0][row]
        lines.append(f"  {row:<28} {', '.join(picks)}   [{first['evidence']}, n={first['n']}]")
    if results.get("vs_msp"):
        lines += ["", "against MSP (paired bootstrap of the test images, mean over draws, 95 % interval):"]
        lines.append(f"  {'score':<28} {'ΔAUROC ×100':>26}  {'E-AURC / MSP':>22}")
        for row, iv in results["vs_msp"].items():
            d, r = iv["delta_auroc"], iv["eaurc_ratio"]
            lines.append(
                f"  {row:<28} {100 * d[0]:+7.2f} [{100 * d[1]:+7.2f}, {100 * d[2]:+7.2f}]"
                f"  {r[0]:5.2f}× [{r[1]:5.2f}, {r[2]:5.2f}]"
            )
    return lines


def write_outputs(result: EvalResult, out_dir: Path) -> None:
    """``summary.json``, ``samples.json`` and ``table.txt`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str))
    (out_dir / "samples.json").write_text(json.dumps(result.samples))
    (out_dir / "table.txt").write_text(render_tables(result) + "\n")
