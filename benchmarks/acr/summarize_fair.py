"""Tables (markdown) and the committed per-seed JSON from a finished ``fair-protocol`` run.

    python benchmarks/acr/summarize_fair.py runs/acr-fair/all.json \
        --json-out benchmarks/acr/results/fair-protocol.json

Tables per configuration: (1) the grid on validation and the point each variant kept; (2) per split, every
variant (MSP) as mean ± std over the evaluation seeds, with confidence degeneration and each head's
accuracy; (3) per split, the paired differences variant − CE: mean, 95 % t-interval, seeds improving.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from app.multimodal.ablation import VARIANT_LABELS
from app.trust.metrics import LOWER_IS_BETTER, METRIC_LABELS, to_paper_units

METRICS = ("accuracy", "aurc", "eaurc", "auroc", "fpr95")
KEPT_SCORE_METRICS = ("accuracy", "aurc", "eaurc", "auroc", "fpr95", "ece")


def _fmt(metric: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    scaled = to_paper_units(metric, value) if metric in METRIC_LABELS else 100 * value
    return f"{scaled:+.2f}" if signed else f"{scaled:.2f}"


def _mean_std(metric: str, values: list[float]) -> str:
    defined = [v for v in values if v is not None]
    if not defined:
        return "n/a"
    return f"{_fmt(metric, float(np.mean(defined)))} ± {_fmt(metric, float(np.std(defined, ddof=1)))}"


def trimmed(results: dict[str, Any]) -> dict[str, Any]:
    """What is committed: the config, the selection tables, per-seed evaluation records and paired stats
    (MSP in full, the other scores' AURC / AUROC / FPR95)."""
    runs: dict[str, dict[str, Any]] = {}
    for variant, by_seed in results["runs"].items():
        runs[variant] = {}
        for seed, run in by_seed.items():
            splits = {}
            for split, data in run["splits"].items():
                scores = {
                    name: {m: report[m] for m in (KEPT_SCORE_METRICS if name == "msp" else METRICS[1:])}
                    for name, report in data["scores"].items()
                }
                splits[split] = {**{k: v for k, v in data.items() if k != "scores"}, "scores": scores}
            runs[variant][seed] = {
                "point": run["point_label"],
                "embed_dims": run["embed_dims"],
                "mfs_n_range": run["mfs_n_range"],
                "best_epoch": run["best_epoch"],
                "train_cpu_seconds": round(run["train_cpu_seconds"], 2),
                "train_seconds": round(run["train_seconds"], 2),
                "val_msp": {m: run["val"]["scores"]["msp"][m] for m in ("accuracy", "aurc", "auroc")},
                "splits": splits,
            }
    return {
        "config": results["config"],
        "selection": results["selection"],
        "paired": results["paired"],
        "runs": runs,
        "seconds": results["seconds"],
        "runs_listed": results["runs_trained"],
    }


def print_tables(name: str, results: dict[str, Any]) -> None:
    config = results["config"]
    print(f"\n## {name}: {config['dataset']}, {config['epochs']} epochs, batch {config['batch_size']}")
    print("\n### grid on validation (mean val AURC×1000 / ACC over tuning seeds; * = kept)\n")
    print("| variant | grid point | val AURC ↓ | val ACC ↑ |\n|---|---|---|---|")
    for variant, chosen in results["selection"].items():
        for row in chosen["table"]:
            mark = " *" if row["label"] == chosen["label"] else ""
            label = VARIANT_LABELS.get(variant, variant)
            aurc, acc = 1000 * row["val_aurc"], 100 * row["val_accuracy"]
            print(f"| {label} | {row['label']}{mark} | {aurc:.2f} | {acc:.2f} |")
    runs = results["runs"]
    for split in config["splits"]:
        print(f"\n### {split}: MSP, mean ± std over {len(next(iter(runs.values())))} evaluation seeds\n")
        head = [f"{METRIC_LABELS[m]} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in METRICS]
        modalities = list(
            next(iter(next(iter(runs.values())).values()))["splits"][split]["unimodal_accuracy"]
        )
        head += ["degeneration rate ↓", "mean gap ×100 ↓", "errors", *(f"{m} ACC" for m in modalities)]
        print("| variant | " + " | ".join(head) + " |\n" + "|---" * (len(head) + 1) + "|")
        for variant, by_seed in runs.items():
            data = [run["splits"][split] for run in by_seed.values()]
            cells = [_mean_std(m, [d["scores"]["msp"][m] for d in data]) for m in METRICS]
            cells.append(_mean_std("rate", [d["degeneration"]["rate"] for d in data]))
            cells.append(_mean_std("gap", [d["degeneration"]["mean_gap"] for d in data]))
            cells.append(f"{np.mean([d['errors'] for d in data]):.0f} / {data[0]['n']}")
            for modality in modalities:
                cells.append(_mean_std("acc", [d["unimodal_accuracy"][modality] for d in data]))
            print(f"| {VARIANT_LABELS.get(variant, variant)} | " + " | ".join(cells) + " |")
        print(f"\n### {split}: paired difference variant − CE (MSP): mean [95 % CI], seeds improving\n")
        keys = [*METRICS, "degeneration_rate"]
        print("| variant | " + " | ".join(f"Δ{METRIC_LABELS.get(k, k)}" for k in keys) + " |")
        print("|---" * (len(keys) + 1) + "|")
        for variant, rows in results["paired"][split].items():
            cells = []
            for key in keys:
                row = rows[key]
                metric = key if key in METRIC_LABELS else "rate"
                cells.append(
                    f"{_fmt(metric, row['mean'], True)} [{_fmt(metric, row['ci_low'], True)}, "
                    f"{_fmt(metric, row['ci_high'], True)}] {row['improved']}/{row['n']}"
                )
            print(f"| {VARIANT_LABELS.get(variant, variant)} | " + " | ".join(cells) + " |")
    cpu = [r["train_cpu_seconds"] for by_seed in runs.values() for r in by_seed.values()]
    listed = results.get("runs_trained", results.get("runs_listed"))
    print(
        f"\n{name}: CPU seconds per evaluation run {min(cpu):.0f}–{max(cpu):.0f}; protocol wall time "
        f"{results['seconds']:.0f} s for {listed} runs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="the --output JSON of fair-protocol")
    parser.add_argument("--json-out", type=Path, help="write the trimmed per-seed JSON here")
    args = parser.parse_args()
    combined = json.loads(args.results.read_text())
    for name, results in combined.items():
        print_tables(name, results)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({k: trimmed(v) for k, v in combined.items()}, indent=1) + "\n")
        print(f"\nwrote {args.json_out} ({args.json_out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
