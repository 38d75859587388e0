"""TrustVLM failure-detection quality of a model preset on registry datasets, checked against the bar.

Runs ``app.trust.evaluation.run_evaluation`` (the code behind ``trustserve eval``) per dataset, prints the
full table (mean ± sample std over support draws), then the quality bar:
  - TrustVLM AUROC ≥ MSP AUROC + 10 points,
  - TrustVLM E-AURC ≥ 30 % lower than MSP's,
  - TrustVLM* accuracy > zero-shot accuracy.
Writes ``<out>/<dataset>/`` (summary.json, samples.json, table.txt, PNGs) and ``<out>/quality.md``.

    OMP_NUM_THREADS=1 python benchmarks/trustvlm_quality/run.py --datasets fashion-mnist,animal-mnist \\
        --shots 16 --draws 3 --test-limit 2000 --out runs/trustvlm-quality
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from app.trust.evaluation import DEFAULT_CACHE_DIR, EvalConfig, render_tables, run_evaluation

AUROC_GAIN_POINTS = 10.0
EAURC_REDUCTION = 0.30


def quality_bar(summary: dict[str, Any], shots: int) -> dict[str, Any]:
    """The bar's three checks on the mean over draws, from a ``run_evaluation`` summary."""
    scores = summary["results"][str(shots)]["scores"]
    msp, trust, star = scores["msp"]["mean"], scores["trustvlm"]["mean"], scores["trustvlm_star"]["mean"]
    auroc_gain = 100 * (trust["auroc"] - msp["auroc"])
    eaurc_reduction = 1 - trust["eaurc"] / msp["eaurc"]
    return {
        "zero_shot_accuracy": 100 * msp["accuracy"],
        "trustvlm_star_accuracy": 100 * star["accuracy"],
        "msp_auroc": 100 * msp["auroc"],
        "trustvlm_auroc": 100 * trust["auroc"],
        "auroc_gain_points": auroc_gain,
        "msp_eaurc": 1000 * msp["eaurc"],
        "trustvlm_eaurc": 1000 * trust["eaurc"],
        "eaurc_reduction_percent": 100 * eaurc_reduction,
        "pass_auroc": auroc_gain >= AUROC_GAIN_POINTS,
        "pass_eaurc": eaurc_reduction >= EAURC_REDUCTION,
        "pass_accuracy": star["accuracy"] > msp["accuracy"],
    }


def describe(bar: dict[str, Any]) -> str:
    """One line per check, PASS/FAIL."""

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    return "\n".join(
        [
            f"  AUROC  MSP {bar['msp_auroc']:.2f} -> TrustVLM {bar['trustvlm_auroc']:.2f} "
            f"({bar['auroc_gain_points']:+.2f} points, need +{AUROC_GAIN_POINTS:g}): "
            f"{verdict(bar['pass_auroc'])}",
            f"  E-AURC MSP {bar['msp_eaurc']:.1f} -> TrustVLM {bar['trustvlm_eaurc']:.1f} "
            f"(-{bar['eaurc_reduction_percent']:.1f} %, need -{100 * EAURC_REDUCTION:g} %): "
            f"{verdict(bar['pass_eaurc'])}",
            f"  ACC    zero-shot {bar['zero_shot_accuracy']:.2f} -> "
            f"TrustVLM* {bar['trustvlm_star_accuracy']:.2f}: "
            f"{verdict(bar['pass_accuracy'])}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="offline-conse")
    parser.add_argument("--datasets", default="fashion-mnist,animal-mnist")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=None, help="default: the preset's trust.alpha")
    parser.add_argument("--tv", type=float, default=None, help="default: the preset's T_v")
    parser.add_argument("--alpha-sweep", default="1", help="extra TrustVLM columns, e.g. 1 (paper default)")
    parser.add_argument("--tune", action="store_true", help="also tune α/T_v on a train calibration split")
    parser.add_argument("--calib-size", type=int, default=1000, help="calibration split size for --tune")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machine)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=Path("runs/trustvlm-quality"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for dataset in [d for d in args.datasets.split(",") if d]:
        config = EvalConfig(
            model=args.model,
            dataset=dataset,
            shots=(args.shots,),
            draws=args.draws,
            test_limit=args.test_limit,
            alpha=args.alpha,
            visual_temperature=args.tv,
            alpha_sweep=tuple(float(a) for a in args.alpha_sweep.split(",") if a),
            tune=args.tune,
            calib_size=args.calib_size,
            batch_size=args.batch_size,
            device=args.device,
            cache_dir=args.cache_dir,
        )
        started = time.perf_counter()
        result = run_evaluation(config, out_dir=args.out / dataset)
        wall = time.perf_counter() - started
        print(render_tables(result))
        bar = quality_bar(result.summary, args.shots)
        timing = result.summary["timing_s"]
        print(f"\n{dataset}: wall {wall:.1f} s (encoding {timing['encode']:.1f} s)\n{describe(bar)}\n")
        rows.append((dataset, bar, wall))

    lines = [
        "| dataset | zero-shot ACC | TrustVLM* ACC | AUROC MSP → TrustVLM "
        "| E-AURC×1000 MSP → TrustVLM | bar |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, bar, _ in rows:
        passed = bar["pass_auroc"] and bar["pass_eaurc"] and bar["pass_accuracy"]
        auroc = f"{bar['msp_auroc']:.2f} → {bar['trustvlm_auroc']:.2f} ({bar['auroc_gain_points']:+.2f})"
        eaurc = (
            f"{bar['msp_eaurc']:.1f} → {bar['trustvlm_eaurc']:.1f} (−{bar['eaurc_reduction_percent']:.1f} %)"
        )
        lines.append(
            f"| {dataset} | {bar['zero_shot_accuracy']:.2f} | {bar['trustvlm_star_accuracy']:.2f} | "
            f"{auroc} | {eaurc} | {'pass' if passed else 'FAIL'} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
