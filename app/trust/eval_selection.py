"""The evaluation's self-selected rows and its intervals against MSP (numpy only; used by
``app.trust.evaluation``).

Per support draw, ``app.trust.selection`` chooses α (α = 0 is MSP) and the image space on evidence the
test split never touches, and the choice is applied to the test set:

- ``<score> (auto…)``: evidence = the draw's support images with leave-one-out prototypes (what a label set
  without calibration data can do; the product default when the preset's ``trust.selection`` is ``auto``);
- ``<score> (tuned…)``: evidence = the draw's calibration images from ``train`` (``--tune``), with the
  anchored rule: the ``auto`` row's choice (the default in use) is kept unless the calibration evidence
  beats it by more than one standard error (``app.trust.selection``, issue 14's ``--tune`` fix).

``…`` names the image spaces the selection could choose from (``: own``, ``: lite0``) — none when it had
all of them. Intervals: a paired bootstrap of the test images (the same resamples for every row and draw)
of each row's AUROC minus MSP's and E-AURC divided by MSP's, averaged over the draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.trust.prototypes import PrototypeBank
from app.trust.scores import msp, trustvlm_scores
from app.trust.selection import (
    DEFAULT_BOOTSTRAP,
    Candidate,
    Score,
    Selection,
    auroc_rows,
    bootstrap_indices,
    candidate_grid,
    eaurc_rows,
    loo_similarities,
    prototype_similarities,
    score_candidates,
    select_candidate,
)

SELECTED_SCORES: tuple[Score, ...] = ("trustvlm", "trustvlm_star")


def space_sets(spaces: Sequence[str]) -> list[tuple[str, ...]]:
    """Each space alone, then all of them together (once when there is one space)."""
    singles: list[tuple[str, ...]] = [(s,) for s in spaces]
    return singles if len(spaces) == 1 else [*singles, tuple(spaces)]


def row_name(score: str, kind: str, subset: Sequence[str], spaces: Sequence[str]) -> str:
    return f"{score} ({kind})" if tuple(subset) == tuple(spaces) else f"{score} ({kind}: {'+'.join(subset)})"


def apply_choice(
    candidate: Candidate,
    score: Score,
    test_logits: np.ndarray,
    test_spaces: Mapping[str, np.ndarray],
    banks: Mapping[str, PrototypeBank],
    *,
    visual_temperature: float,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, judged prediction) of a chosen candidate on the test set."""
    prediction = test_logits.argmax(axis=1)
    if candidate.alpha == 0:
        return msp(test_logits, temperature), prediction
    space = str(candidate.space)
    bank = banks[space]
    result = trustvlm_scores(
        test_logits,
        test_spaces[space],
        bank.prototypes(),
        bank.has_prototype,
        candidate.alpha,
        visual_temperature,
        temperature=temperature,
    )
    return getattr(result, score), result.refined_prediction if score == "trustvlm_star" else prediction


def selected_rows(
    *,
    test_logits: np.ndarray,
    test_spaces: Mapping[str, np.ndarray],
    support: tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray]],  # logits, labels, features per space
    calibration: tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray]] | None,
    num_classes: int,
    spaces: Sequence[str],
    default: Candidate,
    visual_temperature: float,
    temperature: float,
    seed: int,
    replicates: int = DEFAULT_BOOTSTRAP,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, dict[str, Any]]]:
    """Rows ``<score> (auto…)`` and, with calibration data, ``<score> (tuned…)``; TrustVLM* only with all
    spaces. Returns {row: (confidence, judged prediction)} and {row: the selection record (JSON-ready)}."""
    s_logits, s_labels, s_feats = support
    banks = {sp: PrototypeBank.from_features(s_feats[sp], s_labels, num_classes) for sp in spaces}
    evidence: dict[str, tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]] = {
        "auto": (
            s_logits,
            s_labels,
            {sp: loo_similarities(s_feats[sp], s_labels, num_classes) for sp in spaces},
        )
    }
    if calibration is not None:
        c_logits, c_labels, c_feats = calibration
        evidence["tuned"] = (
            c_logits,
            c_labels,
            {
                sp: prototype_similarities(c_feats[sp], banks[sp].prototypes(), banks[sp].has_prototype)
                for sp in spaces
            },
        )
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    records: dict[str, dict[str, Any]] = {}
    defaults: dict[tuple[tuple[str, ...], str], Candidate] = {}  # the auto rows' choices: tuned's anchors
    for kind, (logits, labels, sims) in evidence.items():
        for subset in space_sets(spaces):
            grid = candidate_grid(subset)
            fallback = default if default.space in subset and default in grid else None
            for score in SELECTED_SCORES if tuple(subset) == tuple(spaces) else ("trustvlm",):
                candidates = score_candidates(
                    logits, labels, sims, grid, score=score,
                    visual_temperature=visual_temperature, temperature=temperature,
                )  # fmt: skip
                selection: Selection = select_candidate(
                    candidates,
                    grid,
                    evidence="support-loo" if kind == "auto" else "calibration",
                    score=score,
                    seed=seed,
                    replicates=replicates,
                    no_evidence=fallback,
                    anchor=defaults.get((tuple(subset), score)) if kind == "tuned" else None,
                )
                if kind == "auto":
                    defaults[(tuple(subset), score)] = selection.candidate
                name = row_name(score, kind, subset, spaces)
                rows[name] = apply_choice(
                    selection.candidate, score, test_logits, test_spaces, banks,
                    visual_temperature=visual_temperature, temperature=temperature,
                )  # fmt: skip
                records[name] = selection.model_dump(mode="json")
    return rows, records


def intervals_against(
    confidences: Sequence[Mapping[str, np.ndarray]],
    predictions: Sequence[Mapping[str, np.ndarray]],
    labels: np.ndarray,
    *,
    reference: str = "msp",
    replicates: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, list[float]]]:
    """Per row: ``delta_auroc`` (row − reference) and ``eaurc_ratio`` (row / reference), each as
    [point, 2.5 %, 97.5 %], the point and every resample averaged over the draws (fractions). Rows that are
    NaN anywhere are skipped."""
    n = labels.size
    boot = np.vstack([np.arange(n)[None, :], bootstrap_indices(n, replicates, seed)])  # row 0: the sample

    def metrics(conf: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        correct = (pred == labels).astype(np.int64)[boot]
        return auroc_rows(conf[boot], correct), eaurc_rows(conf[boot], correct)

    ref = [metrics(c[reference], p[reference]) for c, p in zip(confidences, predictions, strict=True)]
    out: dict[str, dict[str, list[float]]] = {}
    for name in confidences[0]:
        if any(np.isnan(c[name]).any() for c in confidences):
            continue
        deltas, ratios = [], []
        for (r_auroc, r_eaurc), c, p in zip(ref, confidences, predictions, strict=True):
            auroc, eaurc = metrics(c[name], p[name])
            deltas.append(auroc - r_auroc)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratios.append(eaurc / r_eaurc)
        delta, ratio = np.mean(deltas, axis=0), np.mean(ratios, axis=0)
        out[name] = {
            "delta_auroc": [float(delta[0]), *map(float, np.nanpercentile(delta[1:], [2.5, 97.5]))],
            "eaurc_ratio": [float(ratio[0]), *map(float, np.nanpercentile(ratio[1:], [2.5, 97.5]))],
        }
    return out
