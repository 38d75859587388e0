"""PNG plots of evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from app.trust.metrics import RiskCoverageCurve


def save_risk_coverage_plot(
    curves: Mapping[str, RiskCoverageCurve],
    path: Path,
    title: str,
    *,
    aurc: Mapping[str, float] | None = None,
) -> Path:
    """One risk-coverage curve per score (selective risk vs. coverage, lower is better); AURC×1000 in the
    legend when given. Returns ``path``."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for name, curve in curves.items():
        label = name if aurc is None or name not in aurc else f"{name} (AURC×1000 {aurc[name] * 1000:.1f})"
        ax.plot(curve.coverage, curve.risk, label=label, linewidth=1.4)
    ax.set_xlabel("coverage (fraction of predictions accepted)")
    ax.set_ylabel("selective risk (error rate among accepted)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_sweep_plot(
    values: Mapping[float, float], path: Path, *, xlabel: str, ylabel: str, title: str, log_x: bool = False
) -> Path:
    """A metric (y) against a hyper-parameter (x), e.g. AUROC against α. Returns ``path``."""
    xs = sorted(values)
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    ax.plot(xs, [values[x] for x in xs], marker="o")
    if log_x:
        ax.set_xscale("symlog", linthresh=min((x for x in xs if x > 0), default=1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
