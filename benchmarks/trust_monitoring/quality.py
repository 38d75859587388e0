"""Quality of live trust monitoring and conformal sets on the embedded offline model (issue 17).

For Fashion-MNIST and Animal-MNIST label sets (16-shot prototypes, 3 draws): per draw, a seeded random
split of 3,000 images (1,000 calibration images from the train split, disjoint from the support draw,
plus the 2,000-image class-balanced test subset) into n = 1,000 calibration and m = 2,000 held-out images.
On each draw:

- conformal prediction sets at ε = 0.1 (LAC and APS on TrustVLM*'s q/(1+α), LAC on the plain softmax) and
  the plain "softmax mass ≥ 1 − ε" set (the naive set of Romano et al., 2020): coverage and mean size on
  the held-out images;
- ATC (Garg et al., ICLR 2022) on the label set's decision score (TrustVLM*, judged against ŷ*), fitted on
  the calibration images: estimated vs true accuracy on the held-out images and on a 1,000-image window
  (the monitor's default window size), and on a shifted window: the other data set's images sent to the
  same label set (true accuracy 0: none of their labels exist in it);
- PSI / KS of those windows against the calibration sketch;
- conformal sets **after a self-selection** (issue 14): α (0 = MSP) and the image space (own, Lite0)
  chosen by the label sets' anchored one-SE rule (``app.labelsets.selection``), LAC on the chosen
  TrustVLM*. ``lac_selected_split``: selection on one half of the n calibration images, q̂ on the other half
  (what ``trustserve`` does); ``lac_selected_same_images``: selection and q̂ on all n (the old way, whose
  guarantee is only approximate). Coverage on the m held-out images.

Encodings are read from (and written to) the ``trustserve eval`` cache, so a second run costs seconds.
Prints a JSON summary; ``--out`` also writes it. Run: ``python -m benchmarks.trust_monitoring.quality``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.labelsets.selection import PolicyEncodings, select_for_label_set
from app.trust.atc import atc_estimate, fit_atc_threshold
from app.trust.conformal import fit_conformal, nonconformity, prediction_sets
from app.trust.datasets import load_dataset
from app.trust.drift import ks_statistic, psi, reference_quantiles
from app.trust.encoding import LoadedModel
from app.trust.eval_config import EvalConfig
from app.trust.eval_inputs import EvalInputs, _encode, encode_inputs
from app.trust.eval_scoring import EncodedSet
from app.trust.prototypes import PrototypeBank
from app.trust.scores import softmax, trustvlm_scores
from app.trust.selection import Candidate, prototype_similarities

DATASETS = ("fashion-mnist", "animal-mnist")
EPSILON = 0.1
N_CALIBRATION = 1000
WINDOW = 1000


def finite_sample_slack(n: int, m: int, epsilon: float, z: float = 3.0) -> float:
    """z standard deviations of one draw's held-out coverage: the coverage given the calibration set is
    Beta(n + 1 − l, l), l = ⌊(n + 1)ε⌋ (variance ≈ ε(1 − ε)/(n + 2)), and m held-out images add binomial
    variance ε(1 − ε)/m (Angelopoulos & Bates, 2021, Sec. 3.2)."""
    return z * math.sqrt(epsilon * (1 - epsilon) * (1 / (n + 2) + 1 / m))


def _prototypes(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    bank = PrototypeBank.from_features(features, labels, classes)
    return bank.prototypes(), bank.has_prototype


def _coverage(sets: list[np.ndarray], labels: np.ndarray) -> tuple[float, float]:
    covered = np.mean([int(y) in s for y, s in zip(labels, sets)])
    return float(covered), float(np.mean([s.size for s in sets]))


def _naive_sets(probabilities: np.ndarray, epsilon: float) -> list[np.ndarray]:
    """Most probable labels until their softmax mass reaches 1 − ε (no guarantee)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    mass = np.cumsum(np.take_along_axis(probabilities, order, axis=1), axis=1)
    sizes = np.minimum((mass < 1 - epsilon).sum(axis=1) + 1, probabilities.shape[1])
    return [order[i, : sizes[i]] for i in range(order.shape[0])]


def selected_conformal(
    pool: EncodedSet, banks: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float, tv: float,
    select_on: np.ndarray, fit_on: np.ndarray, test: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """α and image space self-selected on ``select_on`` (anchored on the preset's α in the own space),
    LAC on the chosen TrustVLM* fitted on ``fit_on``, coverage on ``test``."""
    y = pool.labels
    space_names = {"own": "own", **{name: "independent" for name in banks if name != "own"}}
    sims = {
        space_names[name]: prototype_similarities(pool.spaces[name][select_on], *bank)
        for name, bank in banks.items()
    }
    chosen = select_for_label_set(
        {"letterbox": PolicyEncodings(pool.logits[select_on], y[select_on], sims)},
        default_policy="letterbox", evidence="calibration", score="trustvlm_star",
        visual_temperature=tv, fallback_alpha=alpha, anchor=Candidate(alpha, "own"),
    )  # fmt: skip
    name = next(n for n, s in space_names.items() if s == chosen.image_space)
    star = trustvlm_scores(pool.logits, pool.spaces[name], *banks[name], chosen.alpha, tv)
    probs = star.refined_probabilities
    assert probs is not None
    fitted = fit_conformal(probs[fit_on], y[fit_on], EPSILON, "lac")
    cov, size = _coverage(prediction_sets(probs[test], fitted.threshold, "lac"), y[test])
    return {
        "coverage": cov, "mean_set_size": size, "n_selection": int(select_on.size),
        "n_conformal": int(fit_on.size), "chosen": f"{chosen.image_space}@α={chosen.alpha:g}",
        "candidates": chosen.candidates_compared,
    }  # fmt: skip


def evaluate_draw(
    pool: EncodedSet, shifted: EncodedSet, banks: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float,
    tv: float, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Conformal, ATC and drift numbers for one calibration/held-out split."""
    prototypes, has = banks["own"]
    order = np.random.default_rng(seed).permutation(pool.labels.size)
    cal, test = order[:N_CALIBRATION], order[N_CALIBRATION:]
    half = cal.size // 2
    out_selected = {
        "lac_selected_split": selected_conformal(pool, banks, alpha, tv, cal[:half], cal[half:], test),
        "lac_selected_same_images": selected_conformal(pool, banks, alpha, tv, cal, cal, test),
    }
    star = trustvlm_scores(pool.logits, pool.features, prototypes, has, alpha, tv)
    probs_star = star.refined_probabilities
    assert probs_star is not None
    probs_soft = softmax(pool.logits, axis=1)
    y = pool.labels
    out: dict[str, Any] = {"n_calibration": int(cal.size), "n_held_out": int(test.size), **out_selected}
    for name, probs, method in (
        ("lac_trustvlm_star", probs_star, "lac"),
        ("aps_trustvlm_star", probs_star, "aps"),
        ("lac_softmax", probs_soft, "lac"),
    ):
        fitted = fit_conformal(probs[cal], y[cal], EPSILON, method)  # type: ignore[arg-type]
        sets = prediction_sets(probs[test], fitted.threshold, method)  # type: ignore[arg-type]
        cov, size = _coverage(sets, y[test])
        out[name] = {"coverage": cov, "mean_set_size": size, "threshold": fitted.threshold}
    cov, size = _coverage(_naive_sets(probs_soft[test], EPSILON), y[test])
    out["naive_softmax_mass"] = {"coverage": cov, "mean_set_size": size}
    assert nonconformity(probs_star[cal], y[cal], "lac").size == cal.size
    # ATC on the decision score, judged against the refined prediction
    score, judged = star.trustvlm_star, star.refined_prediction
    correct = judged == y
    t = fit_atc_threshold(score[cal], correct[cal])
    reference = reference_quantiles(score[cal])
    window = test[:WINDOW]
    shifted_star = trustvlm_scores(shifted.logits, shifted.features, prototypes, has, alpha, tv)
    shifted_window = shifted_star.trustvlm_star[:WINDOW]
    out["atc"] = {
        "threshold": t,
        "calibration_accuracy": float(correct[cal].mean()),
        "held_out": {"estimated": atc_estimate(score[test], t), "true": float(correct[test].mean())},
        "window": {"estimated": atc_estimate(score[window], t), "true": float(correct[window].mean())},
        "shifted_window": {"estimated": atc_estimate(shifted_window, t), "true": 0.0},
    }
    out["drift"] = {
        name: {"psi": psi(values, reference), "ks": ks_statistic(values, reference)}
        for name, values in (("window", score[window]), ("shifted_window", shifted_window))
    }
    return out


def encoded(
    dataset: str, model: LoadedModel, cache_dir: Path | None, runtime: str = "auto"
) -> tuple[EvalInputs, EvalConfig]:
    config = EvalConfig(
        model=model.preset.name, dataset=dataset, shots=(16,), draws=3, tune=True,
        calib_size=N_CALIBRATION, batch_size=32, cache_dir=cache_dir, runtime=runtime,
    )  # fmt: skip
    return encode_inputs(config, model, load_dataset), config


def run(
    model_name: str = "offline-conse", cache_dir: Path | None = None, runtime: str = "auto"
) -> dict[str, Any]:
    from app.config import DEFAULT_MODELS_DIR

    model = LoadedModel.load(
        model_name, models_dir=DEFAULT_MODELS_DIR, device="cpu", dtype="float32", runtime=runtime
    )
    alpha, tv = model.preset.trust.alpha, model.preset.trust.visual_temperature
    encodings = {d: encoded(d, model, cache_dir or EvalConfig.cache_dir, runtime) for d in DATASETS}
    inputs = {d: e[0] for d, e in encodings.items()}
    configs = {d: e[1] for d, e in encodings.items()}
    summary: dict[str, Any] = {
        "model": model_name,
        "alpha": alpha,
        "visual_temperature": tv,
        "epsilon": EPSILON,
    }
    for dataset, other in (DATASETS, DATASETS[::-1]):
        mine = inputs[dataset]
        assert mine.calibration is not None
        # the other data set's test images, scored against this label set's text embeddings
        text = model.class_embeddings(mine.class_names).astype(np.float64)
        theirs = inputs[other].test
        their_emb = _test_embeddings(other, model, configs[other]).astype(np.float64)
        logits = model.logit_scale * their_emb @ text.T + model.logit_bias
        shifted = EncodedSet(logits, theirs.features, np.full(theirs.labels.size, -1))
        draws = []
        for d in range(3):
            calibration = mine.calibration[(16, d)]  # disjoint from this draw's support images
            pool = EncodedSet(
                np.concatenate([calibration.logits, mine.test.logits]),
                np.concatenate([calibration.features, mine.test.features]),
                np.concatenate([calibration.labels, mine.test.labels]),
                {s: np.concatenate([calibration.spaces[s], mine.test.spaces[s]]) for s in mine.test.spaces},
            )
            support = mine.support_sets[(16, d)]
            banks = {
                s: _prototypes(support.spaces[s], mine.support_labels[(16, d)], len(mine.class_names))
                for s in support.spaces
            }
            draws.append(evaluate_draw(pool, shifted, banks, alpha, tv, seed=d))
        n, m = draws[0]["n_calibration"], draws[0]["n_held_out"]
        summary[dataset] = {
            "draws": draws,
            "finite_sample_slack_per_draw": finite_sample_slack(n, m, EPSILON),
            "shifted_images_from": other,
        }
    return summary


def _test_embeddings(dataset: str, model: LoadedModel, config: EvalConfig) -> np.ndarray:
    """Joint-space embeddings of the test subset ``encode_inputs`` encoded (read from its cache)."""
    data = load_dataset(dataset, "test", limit=config.test_limit, seed=config.seed)
    tag = f"test-limit{config.test_limit}-seed{config.seed}-default"
    return _encode(replace(config, dataset=dataset), model, data, tag, np.arange(len(data)))["embeddings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="the eval encoding cache")
    parser.add_argument("--runtime", default="auto", help="as TRUSTSERVE_RUNTIME")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(cache_dir=args.cache_dir, runtime=args.runtime)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
