"""Print the ACR ablation tables (markdown) from a finished ``eval-multimodal --ablation`` work folder.

    python benchmarks/acr/summarize.py runs/acr-ablation [--scores msp energy ...]

Tables: (1) per split, every variant with MSP, mean ± std over seeds; (2) per split, every score for
the cross-entropy baseline vs. ACR; (3) per seed, AURC/FPR95 differences ACR − baseline.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from app.multimodal.ablation import VARIANT_LABELS
from app.multimodal.evaluate import TABLE_METRICS, aggregate_runs, markdown_table
from app.trust.scores import BASELINE_SCORES


def load_runs(root: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(root.glob("*/metrics.json")):
        run = json.loads(path.read_text())
        runs[run["variant"]][run["seed"]] = run
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--scores", nargs="+", default=list(BASELINE_SCORES))
    parser.add_argument("--compare", nargs=2, default=["baseline", "acr"], metavar=("A", "B"))
    args = parser.parse_args()
    runs = load_runs(args.root)
    order = [v for v in VARIANT_LABELS if v in runs] + [v for v in runs if v not in VARIANT_LABELS]
    splits = next(iter(next(iter(runs.values())).values()))["splits"].keys()
    for split in splits:
        seeds = sorted({s for v in runs.values() for s in v})
        print(f"\n### {split}: MSP, mean ± std over seeds {seeds}\n")
        rows = {
            VARIANT_LABELS.get(v, v): aggregate_runs(
                [r["splits"][split]["msp"] for r in runs[v].values()], TABLE_METRICS
            )
            for v in order
        }
        print(markdown_table(rows))
        a, b = args.compare
        if a in runs and b in runs:
            print(f"\n### {split}: every score, {VARIANT_LABELS.get(a, a)} vs {VARIANT_LABELS.get(b, b)}\n")
            metrics = ("aurc", "eaurc", "auroc", "fpr95")
            rows = {}
            for score in args.scores:
                for variant in (a, b):
                    reports = [r["splits"][split][score] for r in runs[variant].values()]
                    rows[f"{score} / {VARIANT_LABELS.get(variant, variant)}"] = aggregate_runs(
                        reports, metrics
                    )
            print(markdown_table(rows, metrics))
            print(f"\n{split}, MSP, per seed ({b} − {a}): ", end="")
            diffs = []
            for seed in sorted(set(runs[a]) & set(runs[b])):
                ra, rb = runs[a][seed]["splits"][split]["msp"], runs[b][seed]["splits"][split]["msp"]
                d_aurc = 1000 * (rb["aurc"] - ra["aurc"])
                d_fpr = 100 * (rb["fpr95"] - ra["fpr95"])
                d_acc = 100 * (rb["accuracy"] - ra["accuracy"])
                diffs.append(
                    f"seed {seed}: ΔAURC×1000 {d_aurc:+.2f}, ΔFPR95×100 {d_fpr:+.2f}, ΔACC×100 {d_acc:+.2f}"
                )
            print("; ".join(diffs))
    times = [r["train_seconds"] for v in runs.values() for r in v.values()]
    print(f"\n{len(times)} runs, training+calibration time per run {min(times):.0f}–{max(times):.0f} s")


if __name__ == "__main__":
    main()
