"""Self-selection for one label set (issue 14): the aspect policy, the image space (the model's own, or
the preset's independent one) and α (0 = plain MSP), chosen on labelled evidence — the support images with
leave-one-out prototypes while no calibration data exists, the calibration images at calibrate.

Numpy in, a JSON-ready ``LabelSetSelection`` out; the rule for α and the space is ``app.trust.selection``
(restricted grid of MSP + α × spaces, one-standard-error rule, cross-fitted check). With an ``anchor`` (at
calibrate: what the label set serves now) it is the anchored rule: the anchor is kept unless the evidence
beats it by more than one standard error. With ``preprocess: auto`` the same images are encoded under both
aspect policies; the rule picks a candidate under each, and the default policy is kept unless the other
policy's pick has a lower AURC by more than one paired-bootstrap standard error (the same rule, one level
up). M = policies × candidates is what the threshold step must account for (``app.labelsets.calibration``).
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
OWN_SPACE = "own"  # the model's own image space (the preset's aux encoder)
INDEPENDENT_SPACE = "independent"  # the preset's extra image space (e.g. EfficientNet-Lite0), when it has one
ImageSpaceSetting = Literal["own", "independent", "auto"]
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
    (``selection``: every candidate's AURC/AUROC with intervals, under the chosen policy; its candidate
    names say the space, e.g. ``independent@α=2``)."""

    model_config = ConfigDict(frozen=True)
    evidence: SelectionEvidence
    policy: AspectPolicy
    image_space: str = OWN_SPACE
    image_spaces_compared: list[str] = [OWN_SPACE]
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
    similarities: dict[str, tuple[np.ndarray, np.ndarray]]  # space -> (sims (N, C), valid (C,) or (N, C))


def policies_for(setting: PreprocessSetting) -> tuple[AspectPolicy, ...]:
    """The aspect policies a label set encodes its images under: one, or both for ``auto``."""
    return tuple(ASPECT_POLICIES) if setting == "auto" else (setting,)


def spaces_for(setting: ImageSpaceSetting, available: Sequence[str]) -> tuple[str, ...]:
    """The image spaces a label set encodes its images in: one, or every available one for ``auto``."""
    if setting == "auto":
        return tuple(available)
    if setting not in available:
        raise ValueError(f"image space {setting!r} is not available on this model (it has {list(available)})")
    return (setting,)


def support_encodings(
    embeddings: np.ndarray,
    features: Mapping[str, np.ndarray],
    classes: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    logit_scale: float,
    logit_bias: float,
) -> PolicyEncodings:
    """Support images as evidence: logits against the label set's text, leave-one-out prototype cosines
    in each image space of ``features``."""
    logits = compute_logits(embeddings, text_embeddings, logit_scale, logit_bias)
    sims = {s: loo_similarities(f, classes, text_embeddings.shape[0]) for s, f in features.items()}
    return PolicyEncodings(logits, np.asarray(classes, np.int64), sims)


def calibration_encodings(
    embeddings: np.ndarray,
    features: Mapping[str, np.ndarray],
    classes: np.ndarray,
    text_embeddings: np.ndarray,
    prototypes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    logit_scale: float,
    logit_bias: float,
) -> PolicyEncodings:
    """Calibration images as evidence: logits, cosines to the label set's prototypes (same policy) in each
    space (``prototypes[space] = (normalised prototypes, has_prototype)``)."""
    logits = compute_logits(embeddings, text_embeddings, logit_scale, logit_bias)
    sims = {s: prototype_similarities(features[s], *prototypes[s]) for s in features}
    return PolicyEncodings(logits, np.asarray(classes, np.int64), sims)


def selection_grid(
    fallback_alpha: float,
    alphas: Sequence[float] | None = None,
    spaces: Sequence[str] = (OWN_SPACE,),
    extra: Candidate | None = None,
) -> list[Candidate]:
    """MSP and α × ``spaces`` (``app.trust.selection.DEFAULT_ALPHAS``), plus the fallback α on the first
    space and ``extra`` (e.g. the anchor) when they are not on the grid."""
    grid = candidate_grid(list(spaces)) if alphas is None else candidate_grid(list(spaces), alphas)
    fallback = Candidate(fallback_alpha, spaces[0]) if fallback_alpha > 0 else Candidate()
    for cand in (fallback, extra):
        if cand is not None and cand.name not in {c.name for c in grid}:
            grid = [*grid, cand]
    return grid


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
    anchor: Candidate | None = None,
    current_space: str = OWN_SPACE,
) -> LabelSetSelection:
    """Run the rule for α and the image space under every policy in ``encodings`` (the same images, in
    the same order, with the same spaces), then pick the policy (``POLICY_RULE``). ``fallback_alpha``: used
    when the evidence is too thin to compare; ``anchor``: the setting in use, kept unless beaten (the
    anchored rule of ``app.trust.selection``). MSP needs no image space: it is served in the model's own
    space when that was compared (no extra forward per request), else in ``current_space``."""
    if default_policy not in encodings:
        raise ValueError(f"the default policy {default_policy!r} has no encodings")
    spaces = list(encodings[default_policy].similarities)
    if anchor is not None and anchor.alpha > 0 and anchor.space not in spaces:
        anchor = None  # the space in use is not compared (e.g. its encodings were not kept)
    rule_score = "trustvlm_star" if score == "trustvlm_star" else "trustvlm"
    grid = selection_grid(fallback_alpha, alphas, spaces, anchor)
    fallback = Candidate(fallback_alpha, spaces[0]) if fallback_alpha > 0 else Candidate()
    picks: dict[AspectPolicy, tuple[Selection, np.ndarray, np.ndarray]] = {}
    for policy, enc in encodings.items():
        scores = score_candidates(
            enc.logits,
            enc.labels,
            enc.similarities,
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
            no_evidence=fallback if evidence == "support-loo" and anchor is None else None,
            anchor=anchor,
        )
        picks[policy] = (chosen, scores.confidence[chosen.chosen], scores.correct[chosen.chosen])
    policy, rows = _choose_policy(picks, default_policy, seed, replicates)
    chosen = picks[policy][0]
    if chosen.space is not None:
        space = chosen.space
    else:
        space = OWN_SPACE if OWN_SPACE in spaces else current_space
    return LabelSetSelection(
        evidence=evidence,
        policy=policy,
        image_space=space,
        image_spaces_compared=spaces,
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
    if idx.size < 2:  # e.g. leave-one-out with one support image per class: nothing to compare on
        return default, []
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


def fixed_selection(policy: AspectPolicy, alpha: float, space: str = OWN_SPACE) -> LabelSetSelection:
    """What the user set (or the preset, with selection off): nothing chosen on evidence."""
    return LabelSetSelection(evidence="fixed", policy=policy, alpha=alpha, image_space=space,
                             image_spaces_compared=[space])  # fmt: skip
