"""Self-selection for one label set (issue 14): the aspect policy and α (0 = plain MSP) on the model's own
image space, chosen on labelled evidence — the support images with leave-one-out prototypes while no
calibration data exists, the calibration images at calibrate.

Numpy in, a JSON-ready ``LabelSetSelection`` out; the α rule is ``app.trust.selection`` (restricted grid,
one-standard-error rule, cross-fitted fallback to MSP). With ``preprocess: auto`` the same images are
encoded under both aspect policies; the rule picks a candidate under each, and the preset's policy is kept
unless the other policy's pick has a lower AURC by more than one paired-bootstrap standard error (the
same rule, one level up). The threshold then pays for the whole search: SGR at δ / M with
M = policies × candidates (``app.trust.selection.calibrate_selected_target_risk``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from app.engine.scoring import compute_logits
from app.trust.metrics import aurc
from app.trust.selection import (
    Candidate,
    Evidence,
    Selection,
    aurc_rows,
    bootstrap_indices,
    candidate_grid,
    loo_similarities,
    prototype_similarities,
    score_candidates,
    select_candidate,
)
from app.vlm.preprocessing import ASPECT_POLICIES, AspectPolicy

PreprocessSetting = Literal["crop", "letterbox", "auto"]
SelectionEvidence = Literal["support-loo", "calibration", "fixed"]
SelectionMode = Literal["auto", "fixed"]  # auto: α (0 = MSP) chosen on evidence; fixed: as set
OWN_SPACE = "own"  # the model's own image space (the preset's aux encoder); the only one label sets use yet
SELECTED_SCORES = ("trustvlm", "trustvlm_star")  # the scores whose α the rule chooses
POLICY_RULE = (
    "the preset's aspect policy unless the other policy's selected candidate has a lower AURC on the same "
    "images by more than one paired-bootstrap standard error"
)


class PolicyEvidence(BaseModel):
    """One aspect policy's outcome on the evidence: the candidate the α rule chose under it and its AURC."""

    model_config = ConfigDict(frozen=True)
    policy: AspectPolicy
    chosen: str
    aurc: float
    aurc_minus_default: float
    aurc_minus_default_se: float


class LabelSetSelection(BaseModel):
    """What a label set serves with and why: aspect policy, image space, α, and the evidence
    (``selection``: every candidate's AURC/AUROC with intervals, under the chosen policy)."""

    model_config = ConfigDict(frozen=True)
    evidence: SelectionEvidence
    policy: AspectPolicy
    image_space: str = OWN_SPACE
    alpha: float
    candidates_compared: int = 1
    policies: list[PolicyEvidence] = []
    policy_rule: str | None = None
    selection: Selection | None = None


@dataclass(frozen=True)
class PolicyEncodings:
    """Logits, true classes and prototype cosines of the same evidence images under one aspect policy."""

    logits: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    similarities: tuple[np.ndarray, np.ndarray]  # (sims (N, C), valid (C,) or (N, C))


def policies_for(setting: PreprocessSetting) -> tuple[AspectPolicy, ...]:
    """The aspect policies a label set encodes its images under: one, or both for ``auto``."""
    return tuple(ASPECT_POLICIES) if setting == "auto" else (setting,)


def support_encodings(
    embeddings: np.ndarray,
    features: np.ndarray,
    classes: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    logit_scale: float,
    logit_bias: float,
) -> PolicyEncodings:
    """Support images as evidence: logits against the label set's text, leave-one-out prototype cosines."""
    logits = compute_logits(embeddings, text_embeddings, logit_scale, logit_bias)
    sims = loo_similarities(features, classes, text_embeddings.shape[0])
    return PolicyEncodings(logits, np.asarray(classes, np.int64), sims)


def calibration_encodings(
    embeddings: np.ndarray,
    features: np.ndarray,
    classes: np.ndarray,
    text_embeddings: np.ndarray,
    prototypes: np.ndarray,
    has_prototype: np.ndarray,
    *,
    logit_scale: float,
    logit_bias: float,
) -> PolicyEncodings:
    """Calibration images as evidence: logits, cosines to the label set's prototypes (same policy)."""
    logits = compute_logits(embeddings, text_embeddings, logit_scale, logit_bias)
    sims = prototype_similarities(features, prototypes, has_prototype)
    return PolicyEncodings(logits, np.asarray(classes, np.int64), sims)


def selection_grid(fallback_alpha: float, alphas: Sequence[float] | None = None) -> list[Candidate]:
    """MSP and α on the own space (``app.trust.selection.DEFAULT_ALPHAS``), plus the fallback α."""
    grid = candidate_grid([OWN_SPACE]) if alphas is None else candidate_grid([OWN_SPACE], alphas)
    fallback = Candidate(fallback_alpha, OWN_SPACE) if fallback_alpha > 0 else Candidate()
    return grid if fallback.name in {c.name for c in grid} else [*grid, fallback]


def select_for_label_set(
    encodings: Mapping[AspectPolicy, PolicyEncodings],
    *,
    default_policy: AspectPolicy,
    evidence: Evidence,
    score: str,
    visual_temperature: float,
    fallback_alpha: float,
    alphas: Sequence[float] | None = None,
    seed: int = 0,
    replicates: int = 400,
) -> LabelSetSelection:
    """Run the α rule under every policy in ``encodings`` (the same images, in the same order), then pick
    the policy (``POLICY_RULE``). ``fallback_alpha``: used when the evidence is too thin to compare."""
    if default_policy not in encodings:
        raise ValueError(f"the default policy {default_policy!r} has no encodings")
    rule_score = "trustvlm_star" if score == "trustvlm_star" else "trustvlm"
    grid = selection_grid(fallback_alpha, alphas)
    fallback = Candidate(fallback_alpha, OWN_SPACE) if fallback_alpha > 0 else Candidate()
    picks: dict[AspectPolicy, tuple[Selection, np.ndarray, np.ndarray]] = {}
    for policy, enc in encodings.items():
        scores = score_candidates(
            enc.logits,
            enc.labels,
            {OWN_SPACE: enc.similarities},
            grid,
            score=rule_score,  # type: ignore[arg-type]
            visual_temperature=visual_temperature,
        )
        chosen = select_candidate(
            scores,
            grid,
            evidence=evidence,
            score=rule_score,  # type: ignore[arg-type]
            seed=seed,
            replicates=replicates,
            no_evidence=fallback if evidence == "support-loo" else None,
        )
        picks[policy] = (chosen, scores.confidence[chosen.chosen], scores.correct[chosen.chosen])
    policy, rows = _choose_policy(picks, default_policy, seed, replicates)
    chosen = picks[policy][0]
    return LabelSetSelection(
        evidence=evidence,
        policy=policy,
        alpha=chosen.alpha,
        candidates_compared=len(grid) * len(encodings),
        policies=rows,
        policy_rule=POLICY_RULE if len(encodings) > 1 else None,
        selection=chosen,
    )


def _choose_policy(
    picks: Mapping[AspectPolicy, tuple[Selection, np.ndarray, np.ndarray]],
    default: AspectPolicy,
    seed: int,
    replicates: int,
) -> tuple[AspectPolicy, list[PolicyEvidence]]:
    if len(picks) == 1:
        return default, []
    finite = np.logical_and.reduce([np.isfinite(conf) for _, conf, _ in picks.values()])
    idx = np.flatnonzero(finite)
    boot = bootstrap_indices(idx.size, replicates, seed)

    def measured(policy: AspectPolicy) -> tuple[float, np.ndarray]:
        _, conf, correct = picks[policy]
        c, y = conf[idx], correct[idx].astype(np.int64)
        return aurc(c, y), aurc_rows(c[boot], y[boot])

    base, base_boot = measured(default)
    rows, best, best_margin = [], default, 0.0
    for policy, (sel, _, _) in picks.items():
        point, point_boot = measured(policy)
        diff = point - base
        se = float(np.std(point_boot - base_boot, ddof=1)) if policy != default else 0.0
        rows.append(PolicyEvidence(policy=policy, chosen=sel.chosen, aurc=point, aurc_minus_default=diff,
                                   aurc_minus_default_se=se))  # fmt: skip
        if policy != default and diff < -se and diff < best_margin:
            best, best_margin = policy, diff
    return best, rows


def fixed_selection(policy: AspectPolicy, alpha: float) -> LabelSetSelection:
    """What the user set (or the preset, with selection off): nothing chosen on evidence."""
    return LabelSetSelection(evidence="fixed", policy=policy, alpha=alpha)
