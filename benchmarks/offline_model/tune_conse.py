"""Tune the embedded offline ConSE model on Fashion-MNIST and Animal-MNIST (issue 3's quality bar).

Two stages, so a sweep over cheap choices never repeats the expensive EfficientNet forward:
1. ``extract``: per (variant, dataset, inversion) run EfficientNet-Lite once over a calibration slice and
   16-shot support images (both from ``train``, disjoint) and a ``test`` subset; keep the ImageNet
   probabilities and pooled features as ``.npz`` in ``--cache-dir``.
2. ``sweep``: for each ImageNet class-name text style, ConSE top-k and label prompt template set, build
   the ConSE embeddings from the stored probabilities, fit the logit scale by minimising NLL on the
   calibration slice (never on test), and score the test subset: zero-shot accuracy, MSP vs TrustVLM
   AUROC / E-AURC, TrustVLM* accuracy (app.trust.scores / app.trust.metrics).

Configurations are *ranked on the calibration slice* (zero-shot accuracy there); test numbers are only
reported. Run ``python benchmarks/offline_model/tune_conse.py --help``; commands and the numbers seen are
in benchmarks/offline_model/README.md.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from tqdm import tqdm

from app.trust.datasets import LabelledImages, balanced_subsample, default_invert, load_dataset
from app.trust.metrics import auroc, eaurc
from app.trust.prototypes import PrototypeBank, draw_support_indices
from app.trust.scores import trustvlm_scores
from app.vlm.backends.offline_conse import (
    VARIANTS,
    SentenceEncoder,
    conse_embeddings,
    imagenet_class_texts,
    torch_reference,
)
from app.vlm.presets import DEFAULT_MODELS_DIR, load_preset_file

TEMPLATE_SETS: dict[str, list[str]] = {
    "photo": ["a photo of a {}."],
    "plain": ["{}"],
    "drawing": ["a drawing of a {}."],
    "silhouette": ["a silhouette of a {}."],
    "ensemble": ["a photo of a {}.", "a drawing of a {}.", "a black and white photo of a {}."],
}
CLASS_TEXT_STYLES = {
    "first": ("first", "{}"),
    "all": ("all", "{}"),
    "first-photo": ("first", "a photo of a {}."),
}
TOP_KS = (1, 3, 5, 10, 20, 50)


@dataclass
class Part:
    """EfficientNet outputs for one slice of a dataset."""

    probs: np.ndarray  # (N, 1000) ImageNet probabilities
    features: np.ndarray  # (N, F) pooled penultimate features
    labels: np.ndarray  # (N,)


def outputs_path(args: argparse.Namespace, variant: str, name: str, invert: bool) -> Path:
    """Where stage 1 keeps the EfficientNet outputs of one (variant, dataset, inversion, slice sizes)."""
    return args.cache_dir / f"{variant}-{name}-inv{int(invert)}-t{args.test_limit}-c{args.calib_limit}.npz"


def run_classifier(variant: str, data: LabelledImages, batch_size: int, desc: str) -> Part:
    """ImageNet probabilities and pooled features for every image of ``data`` (torch reference)."""
    preprocess, classifier, _ = _reference(variant)
    probs, feats = [], []
    for start in tqdm(range(0, len(data), batch_size), desc=desc, leave=False):
        batch = np.stack(
            [preprocess(data.images[i]) for i in range(start, min(start + batch_size, len(data)))]
        )
        p, f = classifier.run({"pixels": batch})
        probs.append(p)
        feats.append(f)
    return Part(np.concatenate(probs), np.concatenate(feats), np.asarray(data.labels))


@functools.cache
def _reference(variant: str):  # type: ignore[no-untyped-def]
    return torch_reference(variant)


def cached_text_embeddings(encoder: SentenceEncoder, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    """``encoder.encode(texts)`` memoised as ``.npy`` under ``cache_dir`` (keyed by the texts)."""
    if cache_dir is None:
        return encoder.encode(texts)
    path = Path(cache_dir) / f"class-text-{hashlib.sha256(chr(10).join(texts).encode()).hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    embeddings = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, embeddings, allow_pickle=False)
    return embeddings


def extract(args: argparse.Namespace) -> None:
    """Stage 1: cache EfficientNet outputs for calibration / support / test slices."""
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        for name, invert in itertools.product(args.datasets, args.inverts):
            path = outputs_path(args, variant, name, invert)
            if path.exists():
                continue
            t0 = time.perf_counter()
            train = load_dataset(name, "train", invert=invert)
            support_idx = draw_support_indices(train.labels, args.shots, args.support_seed)
            rest = np.setdiff1d(np.arange(len(train)), support_idx)
            calib_idx = rest[balanced_subsample(train.labels[rest], args.calib_limit, seed=1)]
            test = load_dataset(name, "test", invert=invert, limit=args.test_limit, seed=0)
            parts = {
                "calib": run_classifier(
                    variant, train.subset(calib_idx), args.batch_size, f"{variant} {name} calib"
                ),
                "support": run_classifier(variant, train.subset(support_idx), args.batch_size, "support"),
                "test": run_classifier(variant, test, args.batch_size, "test"),
            }
            arrays = {
                f"{k}_{field}": getattr(v, field)
                for k, v in parts.items()
                for field in ("probs", "features", "labels")
            }
            np.savez(path, **arrays)
            print(f"extracted {path.name}: {time.perf_counter() - t0:.1f} s", flush=True)


def load_parts(path: Path) -> dict[str, Part]:
    with np.load(path, allow_pickle=False) as z:
        return {
            k: Part(z[f"{k}_probs"], z[f"{k}_features"], z[f"{k}_labels"])
            for k in ("calib", "support", "test")
        }


def fit_logit_scale(cosines: np.ndarray, labels: np.ndarray) -> float:
    """argmin_s NLL(softmax(s · cos), labels) on held-out data (temperature scaling, Guo et al., 2017)."""

    def nll(log_s: float) -> float:
        return float(-log_softmax(np.exp(log_s) * cosines, axis=1)[np.arange(len(labels)), labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.1), np.log(500.0)), method="bounded").x))


def label_embeddings(encoder: SentenceEncoder, class_names: list[str], templates: list[str]) -> np.ndarray:
    """Mean over templates of normalised prompt embeddings, renormalised (as the engine does)."""
    per = [encoder.encode([t.format(c) for c in class_names]) for t in templates]
    mean = np.mean(per, axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def failure_metrics(logits: np.ndarray, part: Part, bank: PrototypeBank, alpha: float, t_v: float) -> dict:
    """Accuracy and MSP / TrustVLM / TrustVLM* AUROC and E-AURC of one slice (prototypes from ``bank``)."""
    res = trustvlm_scores(logits, part.features, bank.prototypes(), bank.has_prototype, alpha, t_v)
    correct, correct_star = res.prediction == part.labels, res.refined_prediction == part.labels
    return {
        "acc": float(correct.mean()),
        "msp_auroc": auroc(res.s_it, correct),
        "tvlm_auroc": auroc(res.trustvlm, correct),
        "msp_eaurc": eaurc(res.s_it, correct),
        "tvlm_eaurc": eaurc(res.trustvlm, correct),
        "star_acc": float(correct_star.mean()),
        "star_auroc": auroc(res.trustvlm_star, correct_star),
        "star_eaurc": eaurc(res.trustvlm_star, correct_star),
    }


def evaluate(
    parts: dict[str, Part],
    class_emb: np.ndarray,
    labels_emb: np.ndarray,
    top_k: int,
    alphas: list[float],
    t_v: float,
    logit_scale: float | None = None,
) -> list[dict]:
    """Calibration and test metrics for each alpha; the logit scale is fitted on the calibration slice
    unless given."""

    def cos(part: Part) -> np.ndarray:
        return conse_embeddings(part.probs, class_emb, top_k) @ labels_emb.T

    calib_cos, test_cos = cos(parts["calib"]), cos(parts["test"])
    scale = logit_scale if logit_scale is not None else fit_logit_scale(calib_cos, parts["calib"].labels)
    support = parts["support"]
    bank = PrototypeBank.from_features(support.features, support.labels, labels_emb.shape[0])
    rows = []
    for alpha in alphas:
        calib = failure_metrics(scale * calib_cos, parts["calib"], bank, alpha, t_v)
        test = failure_metrics(scale * test_cos, parts["test"], bank, alpha, t_v)
        rows.append(
            {
                "logit_scale": round(scale, 3),
                "alpha": alpha,
                **{f"calib_{k}": v for k, v in calib.items()},
                **test,
            }
        )
    return rows


def sweep(args: argparse.Namespace) -> None:
    """Stage 2: every cheap configuration on the cached outputs; rank by calibration accuracy."""
    encoder = _reference("lite0")[2]
    class_embs = {
        style: cached_text_embeddings(
            encoder, [tmpl.format(n) for n in imagenet_class_texts(kind)], args.text_cache
        )
        for style, (kind, tmpl) in CLASS_TEXT_STYLES.items()
        if style in args.class_styles
    }
    rows = []
    for variant, name, invert in itertools.product(args.variants, args.datasets, args.inverts):
        parts = load_parts(outputs_path(args, variant, name, invert))
        class_names = load_dataset(name, "test", limit=1).class_names
        for tset in args.template_sets:
            labels_emb = label_embeddings(encoder, class_names, TEMPLATE_SETS[tset])
            for style, top_k in itertools.product(class_embs, args.top_ks):
                config = {"variant": variant, "dataset": name, "invert": invert, "templates": tset,
                          "class_text": style, "top_k": top_k}  # fmt: skip
                for r in evaluate(
                    parts, class_embs[style], labels_emb, top_k, args.alphas, args.visual_temperature
                ):
                    rows.append({**config, **r})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print_table(rows, args.show)


def final(args: argparse.Namespace) -> None:
    """Stage 3: the shipped preset exactly as configured (variant, top-k, class texts, templates, logit
    scale, alpha, T_v), plus the logit scale fitted on the pooled calibration slices of all datasets."""
    preset = load_preset_file(args.preset)
    variant, top_k = preset.args["variant"], int(preset.args["top_k_classes"])
    kind, template = preset.args["class_name_style"], preset.args.get("class_template", "{}")
    encoder = _reference("lite0")[2]
    class_emb = cached_text_embeddings(
        encoder, [template.format(n) for n in imagenet_class_texts(kind)], args.text_cache
    )
    cosines, labels, per_dataset = [], [], {}
    for name in args.datasets:
        parts = load_parts(outputs_path(args, variant, name, default_invert(name)))
        labels_emb = label_embeddings(
            encoder, load_dataset(name, "test", limit=1).class_names, preset.templates
        )
        calib_cos = conse_embeddings(parts["calib"].probs, class_emb, top_k) @ labels_emb.T
        cosines.append(calib_cos)
        labels.append(parts["calib"].labels)
        per_dataset[name] = (parts, labels_emb)
    pooled = fit_logit_scale(np.concatenate(cosines), np.concatenate(labels))
    print(f"preset {preset.name}: logit_scale {preset.logit_scale} (pooled calibration fit: {pooled:.3f})")
    cols = ["dataset", "n_test", "acc", "msp_auroc", "tvlm_auroc", "msp_eaurc", "tvlm_eaurc", "star_acc",
            "star_auroc", "star_eaurc", "auroc_gain", "eaurc_cut"]  # fmt: skip
    rows = []
    for name, (parts, labels_emb) in per_dataset.items():
        (r,) = evaluate(parts, class_emb, labels_emb, top_k, [preset.trust.alpha],
                        preset.trust.visual_temperature, logit_scale=preset.logit_scale)  # fmt: skip
        gain, cut = 100 * (r["tvlm_auroc"] - r["msp_auroc"]), 1 - r["tvlm_eaurc"] / r["msp_eaurc"]
        rows.append(
            {"dataset": name, "n_test": len(parts["test"].labels), **r, "auroc_gain": gain, "eaurc_cut": cut}
        )
    print_rows(rows, cols)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"preset": str(args.preset), "pooled_logit_scale": pooled, "rows": rows}, indent=1)
    )


CONFIG_KEYS = ("variant", "invert", "templates", "class_text", "top_k")


def print_rows(rows: list[dict], cols: list[str]) -> None:
    print(" ".join(f"{c.replace('calib_', 'cal_'):>11}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>11.4f}" if isinstance(r[c], float) else f"{r[c]!s:>11}" for c in cols))


def print_table(rows: list[dict], show: int) -> None:
    """Per dataset: the ``show`` best configurations by calibration accuracy (first alpha), then every
    alpha for the best one. Ranking uses only the calibration slice (train split), never test numbers."""
    cols = [*CONFIG_KEYS, "logit_scale", "calib_acc", "acc", "msp_auroc", "tvlm_auroc", "msp_eaurc",
            "tvlm_eaurc", "star_acc"]  # fmt: skip
    alpha_cols = ["alpha", "calib_msp_auroc", "calib_tvlm_auroc", "calib_msp_eaurc", "calib_tvlm_eaurc",
                  "calib_star_acc", "msp_auroc", "tvlm_auroc", "msp_eaurc", "tvlm_eaurc",
                  "star_acc"]  # fmt: skip
    first_alpha = rows[0]["alpha"]
    for name in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == name]
        ranked = sorted((r for r in mine if r["alpha"] == first_alpha), key=lambda r: -r["calib_acc"])
        print(f"\n== {name}: top {show} configurations by calibration accuracy (alpha={first_alpha})")
        print_rows(ranked[:show], cols)
        best = {k: ranked[0][k] for k in CONFIG_KEYS}
        print(f"-- {name}: alpha sweep for {best}")
        print_rows([r for r in mine if all(r[k] == v for k, v in best.items())], alpha_cols)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["extract", "sweep", "final", "all"])
    p.add_argument("--preset", type=Path, default=DEFAULT_MODELS_DIR / "offline-conse.yaml", help="for final")
    p.add_argument("--variants", nargs="+", default=["lite2"], choices=sorted(VARIANTS))
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist", "animal-mnist"])
    p.add_argument("--inverts", nargs="+", type=lambda s: s.lower() in {"1", "true", "yes"}, default=[True])
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--calib-limit", type=int, default=500)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--support-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--template-sets", nargs="+", default=list(TEMPLATE_SETS), choices=list(TEMPLATE_SETS))
    p.add_argument(
        "--class-styles", nargs="+", default=list(CLASS_TEXT_STYLES), choices=list(CLASS_TEXT_STYLES)
    )
    p.add_argument("--top-ks", nargs="+", type=int, default=list(TOP_KS))
    p.add_argument("--alphas", nargs="+", type=float, default=[1.0])
    p.add_argument("--visual-temperature", type=float, default=0.01)
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/trustserve-conse-tune"))
    p.add_argument("--text-cache", type=Path, default=Path("/tmp/trustserve-conse-tune/text"))
    p.add_argument("--out", type=Path, default=Path("/tmp/trustserve-conse-tune/sweep.json"))
    p.add_argument("--show", type=int, default=12)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.stage in {"extract", "all"}:
        extract(args)
    if args.stage in {"sweep", "all"}:
        sweep(args)
    if args.stage == "final":
        final(args)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
