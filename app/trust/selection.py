"""Self-selection of TrustVLM's α and image space that is never worse than MSP (numpy in, numpy out).

TrustVLM (Dong et al., 2025, arXiv 2505.23745) fuses κ = S_it + α · S_ii with a fixed α. Where the image
space is weak, a fixed α can rank mistakes worse than MSP alone. Here α = 0 (plain MSP) is a candidate,
and α and the image space are chosen on labelled evidence with a rule made for a few hundred samples:

1. **Restricted grid.** Candidates = MSP, then (α, space) for α in ``DEFAULT_ALPHAS`` and each available
   space, ordered from simplest (closest to MSP: smaller α first; at equal α the first space listed, i.e.
   the model's own) to most complex.
2. **One-standard-error rule** (Breiman et al., 1984; Hastie et al., *ESL* §7.10): the criterion is AURC
   (``shared/specs/metrics.md``; for a fixed prediction it orders candidates exactly as E-AURC). Let b be
   the best candidate; for every candidate m the paired bootstrap standard error of AURC_m − AURC_b is
   computed on the same resamples; the *simplest* candidate with AURC_m − AURC_b ≤ SE_m is chosen. A
   fusion is therefore only chosen when it beats MSP by more than one paired standard error.
3. **Cross-fitting check.** The evidence is split into ``folds`` stratified folds; the rule is run on all
   folds but one and the candidate it picks is scored against MSP on the held-out fold. When the mean
   out-of-fold AURC gain of the *procedure* over MSP is not positive, MSP is chosen (the fallback says so).
4. Too little evidence (fewer than ``min_errors`` errors or correct predictions) chooses MSP.

**Anchored** (``anchor=``, issue 14's ``--tune`` fix): when a default is already in use (the preset's α, or
what the support images chose before calibration data existed), the rule starts from it instead of MSP.
The anchor comes first in the order of step 2 (the best must beat it by more than one paired standard
error), and step 3 compares the procedure with the anchor: it moves away only when its cross-fitted
out-of-fold AURC gain over the anchor exceeds one standard error of that gain (over folds). Moving to MSP
is one of the moves, so a fused default that ranks worse than MSP is still left when the evidence says so.

The evidence is either labelled calibration data (``evidence="calibration"``) or, before any exists, the
support images themselves with leave-one-out prototypes (``evidence="support-loo"``,
:func:`loo_similarities`): each support image is scored against prototypes built without it, so it is a
fresh sample for its own class.

The reject threshold and the conformal sets must not be fitted on data the selection chose with (or
must pay for the choice): label sets select on one half of their calibration images and fit the
threshold and the conformal sets on the other (``app.labelsets.calibration``, which says why a split and
not a union-bound correction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import rankdata
from sklearn.model_selection import StratifiedKFold

from app.trust.metrics import aurc, auroc
from app.trust.scores import l2_normalize, msp, trustvlm_from_similarities

DEFAULT_ALPHAS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
MSP = "msp"
Evidence = Literal["calibration", "support-loo"]
Score = Literal["trustvlm", "trustvlm_star"]
DEFAULT_BOOTSTRAP = 400
DEFAULT_FOLDS = 5
MIN_ERRORS = 5


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: MSP (α = 0, no space) or TrustVLM with weight α on image space ``space``."""

    alpha: float = 0.0
    space: str | None = None

    @property
    def name(self) -> str:
        return MSP if self.alpha == 0 else f"{self.space}@α={self.alpha:g}"


def candidate_grid(spaces: Sequence[str], alphas: Sequence[float] = DEFAULT_ALPHAS) -> list[Candidate]:
    """MSP first, then (α ascending, spaces in the given order): the simplicity order of the rule."""
    if any(a <= 0 for a in alphas):
        raise ValueError("the grid's α values must be > 0 (α = 0 is MSP, always the first candidate)")
    return [Candidate(), *(Candidate(float(a), s) for a in sorted(alphas) for s in spaces)]


@dataclass(frozen=True)
class CandidateScores:
    """Each candidate's confidences and the correctness of the prediction it judges, on one evidence set."""

    confidence: dict[str, np.ndarray]
    correct: dict[str, np.ndarray]


def score_candidates(
    logits: np.ndarray,
    labels: np.ndarray,
    similarities: Mapping[str, tuple[np.ndarray, np.ndarray]],
    grid: Sequence[Candidate],
    *,
    score: Score = "trustvlm",
    visual_temperature: float = 0.01,
    temperature: float = 1.0,
) -> CandidateScores:
    """Confidence and correctness of every candidate. ``similarities[space] = (sims (B, C), valid (C,) or
    (B, C))``: the cosines of each image to each class prototype in that space. TrustVLM judges argmax z;
    TrustVLM* its refined prediction (so α also changes what is judged)."""
    labels = np.asarray(labels)
    prediction = np.asarray(logits).argmax(axis=1)
    confidence, correct = {}, {}
    for cand in grid:
        if cand.alpha == 0:
            confidence[cand.name], correct[cand.name] = msp(logits, temperature), prediction == labels
            continue
        sims, valid = similarities[cand.space]  # type: ignore[index]
        result = trustvlm_from_similarities(
            logits, sims, valid, cand.alpha, visual_temperature, temperature=temperature
        )
        judged = result.refined_prediction if score == "trustvlm_star" else prediction
        confidence[cand.name], correct[cand.name] = getattr(result, score), judged == labels
    return CandidateScores(confidence, correct)


def prototype_similarities(
    features: np.ndarray, prototypes: np.ndarray, has_prototype: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sims (B, C), valid (C,)) of raw features against normalised prototypes."""
    return l2_normalize(features) @ np.asarray(prototypes, dtype=np.float64).T, np.asarray(
        has_prototype, bool
    )


def loo_similarities(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out prototype cosines of support images: image i against P_c = normalize(Σ of class c's
    raw features), except its own class, whose prototype is rebuilt without it (invalid when it was the
    only one). Returns (sims (N, C), valid (N, C))."""
    feats = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, feats.shape[1]))
    np.add.at(sums, labels, feats)
    counts = np.bincount(labels, minlength=num_classes)
    unit = l2_normalize(feats)
    sims = unit @ l2_normalize(sums).T
    rows = np.arange(labels.size)
    own = l2_normalize(sums[labels] - feats)
    sims[rows, labels] = np.einsum("nf,nf->n", unit, own)
    valid = np.broadcast_to(counts > 0, sims.shape).copy()
    valid[rows, labels] = counts[labels] > 1
    return sims, valid


# --- the rule ---------------------------------------------------------------------------------------------


class CandidateEvidence(BaseModel):
    """One candidate's numbers on the evidence (fractions; intervals: 95 % paired bootstrap percentiles)."""

    model_config = ConfigDict(frozen=True)
    name: str
    alpha: float
    space: str | None
    aurc: float
    aurc_interval: tuple[float, float]
    auroc: float | None
    auroc_interval: tuple[float, float] | None
    aurc_minus_msp: float
    aurc_minus_msp_interval: tuple[float, float]
    aurc_minus_best_se: float
    within_one_se: bool


class Selection(BaseModel):
    """What was chosen, on which evidence, and why; ``candidates`` holds every candidate's numbers."""

    model_config = ConfigDict(frozen=True)
    chosen: str
    alpha: float
    space: str | None
    score: str
    evidence: Evidence
    n: int
    n_errors: int
    best: str
    rule: str
    anchor: str | None = None  # the default in use the anchored rule started from (None: MSP)
    crossfit_gain: float | None = None  # mean out-of-fold AURC(base) − AURC(chosen by the rule); base =
    # the anchor, else MSP
    crossfit_gain_se: float | None = None
    crossfit_choices: list[str] = []
    fallback: str | None = None
    candidates: list[CandidateEvidence] = []

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.alpha, self.space)


ANCHORED_RULE_TEXT = (
    "keep the default in use ({anchor}) unless the best candidate's calibration AURC is lower by more than "
    "one paired-bootstrap standard error AND the rule's cross-fitted out-of-fold AURC gain over the default "
    "exceeds one standard error; then the simplest candidate within one standard error of the best"
)
RULE_TEXT = (
    "simplest candidate (MSP, then smaller α, then the model's own space) whose calibration AURC is within "
    "one paired-bootstrap standard error of the best; MSP unless the rule's cross-fitted out-of-fold AURC "
    "gain over MSP is positive"
)


def bootstrap_indices(n: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n) resampling indices (with replacement), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def aurc_rows(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """AURC of each row of (R, n) confidence / correctness arrays (stable sort, as ``metrics.aurc``)."""
    order = np.argsort(-conf, axis=1, kind="stable")
    errors = np.cumsum(1 - np.take_along_axis(correct, order, axis=1), axis=1)
    return (errors / np.arange(1, conf.shape[1] + 1)).mean(axis=1)


def auroc_rows(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """AUROC (correct = positive, ties one half) of each row; NaN where a row has one class only."""
    ranks = rankdata(conf, axis=1)
    pos = correct.sum(axis=1)
    neg = correct.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * correct).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)


def eaurc_rows(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """E-AURC of each row (AURC − r − (1 − r) ln(1 − r)); NaN where every sample is wrong."""
    r = 1.0 - correct.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        optimal = np.where(r < 1.0, r + (1.0 - r) * np.log1p(-np.minimum(r, 1 - 1e-12)), np.nan)
    return aurc_rows(conf, correct) - optimal


def _interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _one_se_choice(
    scores: CandidateScores, order: Sequence[str], idx: np.ndarray, boot: np.ndarray
) -> tuple[str, str, dict[str, np.ndarray], dict[str, float], dict[str, float]]:
    """The rule on the samples ``idx`` (bootstrap resamples drawn within them): (chosen, best, bootstrap
    AURCs per candidate, point AURCs, SE of the difference to the best)."""
    point = {m: aurc(scores.confidence[m][idx], scores.correct[m][idx]) for m in order}
    best = min(order, key=lambda m: point[m])  # first minimum in simplicity order
    boot_aurc = {
        m: aurc_rows(scores.confidence[m][idx][boot], scores.correct[m][idx][boot].astype(np.int64))
        for m in order
    }
    se = {m: float(np.std(boot_aurc[m] - boot_aurc[best], ddof=1)) for m in order}
    chosen = next(m for m in order if point[m] - point[best] <= se[m])
    return chosen, best, boot_aurc, point, se


def select_candidate(
    scores: CandidateScores,
    grid: Sequence[Candidate],
    *,
    evidence: Evidence,
    score: Score = "trustvlm",
    folds: int = DEFAULT_FOLDS,
    replicates: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    min_errors: int = MIN_ERRORS,
    no_evidence: Candidate | None = None,
    anchor: Candidate | None = None,
) -> Selection:
    """Apply the rule of the module docstring to ``scores`` (all candidates of ``grid`` on one evidence
    set) and return the choice with every candidate's evidence. ``no_evidence``: the candidate to use when
    the evidence is too thin to compare (default MSP, or the anchor; e.g. a preset's default α, said in
    ``fallback``). ``anchor``: the default in use, kept unless the evidence beats it (the anchored rule)."""
    order = [c.name for c in grid]
    if not order or order[0] != MSP:
        raise ValueError("the grid must start with MSP (α = 0)")
    by_name = {c.name: c for c in grid}
    base = MSP
    if anchor is not None:
        if anchor.name not in by_name:
            raise ValueError(f"anchor candidate {anchor.name} is not in the grid")
        base = anchor.name
        order = [base, *(m for m in order if m != base)]  # the anchor is the "simplest"
        no_evidence = no_evidence or anchor
    n = int(scores.confidence[MSP].size)
    finite = np.ones(n, dtype=bool)
    for m in order:  # e.g. leave-one-out support images whose predicted class had no other image
        finite &= np.isfinite(scores.confidence[m])
    idx = np.flatnonzero(finite)
    msp_correct = scores.correct[MSP][idx].astype(np.int64)
    errors = int(idx.size - msp_correct.sum())

    def result(chosen: str, best: str, **extra: object) -> Selection:
        cand = by_name[chosen]
        return Selection(
            chosen=chosen, alpha=cand.alpha, space=cand.space, score=score, evidence=evidence,
            n=int(idx.size), n_errors=errors, best=best, anchor=anchor.name if anchor else None,
            rule=ANCHORED_RULE_TEXT.format(anchor=base) if anchor else RULE_TEXT, **extra,
        )  # fmt: skip

    if min(errors, idx.size - errors) < min_errors:
        default = no_evidence or Candidate()
        if default.name not in by_name:
            raise ValueError(f"no_evidence candidate {default.name} is not in the grid")
        return result(
            default.name,
            base,
            fallback=f"too little evidence: {errors} errors and {idx.size - errors} correct predictions "
            f"among {idx.size} samples (need {min_errors} of each); using {default.name}",
        )
    resamples = bootstrap_indices(idx.size, replicates, seed)
    chosen, best, boot, point, se = _one_se_choice(scores, order, idx, resamples)
    listed = [c.name for c in grid]  # the evidence in grid order (MSP first), whatever the anchor
    evidence_rows = _evidence(scores, listed, by_name, idx, resamples, boot, point, se, best)

    fallback: str | None = None
    gain: float | None = None
    gain_se: float | None = None
    choices: list[str] = []
    if folds >= 2 and chosen != base:
        gain, gain_se, choices = _crossfit_gain(
            scores, order, idx, msp_correct, folds, replicates, seed, min_errors
        )
        if anchor is None and gain is not None and gain <= 0:
            fallback = f"the rule's cross-fitted out-of-fold AURC gain over MSP is {gain:.4f} ≤ 0"
            chosen = MSP
        elif anchor is not None and (gain is None or gain_se is None or gain <= gain_se):
            shown = "unavailable" if gain is None else f"{gain:.4f} (SE {gain_se:.4f})"
            fallback = (
                f"the rule's cross-fitted out-of-fold AURC gain over the default {base} is {shown}: kept"
            )
            chosen = base
    return result(
        chosen,
        best,
        crossfit_gain=gain,
        crossfit_gain_se=gain_se,
        crossfit_choices=choices,
        fallback=fallback,
        candidates=evidence_rows,
    )


def _evidence(
    scores: CandidateScores,
    order: Sequence[str],
    by_name: Mapping[str, Candidate],
    idx: np.ndarray,
    resamples: np.ndarray,
    boot: Mapping[str, np.ndarray],
    point: Mapping[str, float],
    se: Mapping[str, float],
    best: str,
) -> list[CandidateEvidence]:
    rows = []
    for m in order:
        conf, correct = scores.confidence[m][idx], scores.correct[m][idx].astype(np.int64)
        roc = auroc(conf, correct)
        roc_boot = auroc_rows(conf[resamples], correct[resamples]) if roc is not None else None
        rows.append(
            CandidateEvidence(
                name=m,
                alpha=by_name[m].alpha,
                space=by_name[m].space,
                aurc=point[m],
                aurc_interval=_interval(boot[m]),
                auroc=roc,
                auroc_interval=_interval(roc_boot) if roc_boot is not None else None,
                aurc_minus_msp=point[m] - point[MSP],
                aurc_minus_msp_interval=_interval(boot[m] - boot[MSP]),
                aurc_minus_best_se=se[m],
                within_one_se=point[m] - point[best] <= se[m],
            )
        )
    return rows


def _crossfit_gain(
    scores: CandidateScores,
    order: Sequence[str],
    idx: np.ndarray,
    strata: np.ndarray,
    folds: int,
    replicates: int,
    seed: int,
    min_errors: int,
) -> tuple[float | None, float | None, list[str]]:
    """Mean and standard error over folds of AURC(base) − AURC(the rule's choice on the other folds), on
    the held-out fold; base = ``order[0]`` (MSP, or the anchor). ``None`` when a fold split is impossible
    (too few of a class)."""
    if min(int(strata.sum()), int(strata.size - strata.sum())) < folds:
        return None, None, []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    gains, choices = [], []
    for fit, held in splitter.split(idx, strata):
        fit_idx, held_idx = idx[fit], idx[held]
        fit_errors = int(fit.size - strata[fit].sum())
        if min(fit_errors, fit.size - fit_errors) < min_errors:
            chosen = order[0]
        else:
            chosen = _one_se_choice(scores, order, fit_idx, bootstrap_indices(fit.size, replicates, seed))[0]
        choices.append(chosen)
        gains.append(
            aurc(scores.confidence[order[0]][held_idx], scores.correct[order[0]][held_idx])
            - aurc(scores.confidence[chosen][held_idx], scores.correct[chosen][held_idx])
        )
    arr = np.asarray(gains)
    return float(arr.mean()), float(arr.std(ddof=1) / np.sqrt(arr.size)), choices
