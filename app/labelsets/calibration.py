"""Calibrating a label set's reject rule on labelled images, in four steps:

1. ``select_on_calibration`` (when the label set self-selects, or with ``tune``): the aspect policy
   (``preprocess: auto``: the images are encoded under both), the image space (``image_space: auto``: in
   both) and α (0 = MSP) are chosen by the anchored, cross-fitted one-standard-error rule of
   ``app.labelsets.selection`` — starting from what the label set serves now — on the **selection part**:
   a class-stratified, seeded half of the calibration images (``SELECTION_FRACTION``). The choice and every
   candidate's evidence go into the record. T_v is never touched.
2. the threshold: ``app.trust.calibration`` on the **other part** (all images when nothing is selected),
   scored by the label set's own ``LabelSetView.score`` — the function classify uses. The selected
   settings are a function of images disjoint from these, so SGR's guarantee holds at δ as stated;
   target coverage has no guarantee to protect.
3. the record: the rule's result, the settings, ``n_tuning`` (the selection part's size), and the basis
   the scores were computed from (``app.labelsets.basis``), stored with the label set as a new version.
4. ``live_trust``: on the threshold's images, the conformal threshold of the prediction sets and the live
   monitor's reference (``app.labelsets.live_trust``), stored inside the record so that whatever drops the
   threshold drops them too. Fitted on images the selection never saw, split conformal's finite-sample
   coverage ≥ 1 − ε holds for the selected settings (docs/TRUST_MONITORING.md).

Why a split and not a correction: a union bound over the M candidates would keep the same images for
everything, but conformal sets at ε / M (M ≈ 12–48) are far larger (at ε = 0.1, M = 24, the
⌈(n + 1)(1 − ε/M)⌉-th score is near the maximum), while SGR at δ / M on n images and SGR at δ on n / 2
give thresholds of about the same coverage (ln(M/δ)/n vs ln(1/δ)/(n/2) in the bound's slack).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.engine.scoring import ScoredBatch
from app.errors import Conflict, InvalidInput
from app.labelsets.live_trust import LiveTrustFit, fit_live_trust
from app.labelsets.models import COUNTS, CalibrationRecord, LabelSetMeta, LabelSetView
from app.labelsets.repository import Entry, LabelSetRepository
from app.labelsets.selection import (
    SELECTED_SCORES,
    LabelSetSelection,
    PolicyEncodings,
    calibration_encodings,
    policies_for,
    select_for_label_set,
    selection_grid,
)
from app.labelsets.self_selection import apply_selection, selects_alpha
from app.labelsets.support import Images, check_pairs, class_indices, encode_in_spaces, label_set_spaces
from app.labelsets.support_features import complete_policies, complete_spaces, prototype_state
from app.labelsets.views import build_view
from app.trust.calibration import (
    DEFAULT_DELTA,
    CalibrationError,
    CalibrationResult,
    CalibrationRule,
    calibrate_target_coverage,
    calibrate_target_risk,
    min_calibration_size,
)
from app.trust.conformal import DEFAULT_EPSILON, ConformalMethod
from app.trust.scores import TrustScoreName, judges_refined_prediction, l2_normalize
from app.trust.selection import Candidate
from app.vlm.preprocessing import AspectPolicy

Encoded = Mapping[AspectPolicy, tuple[np.ndarray, Mapping[str, np.ndarray]]]  # p -> (emb, {space: f})
SELECTION_FRACTION = 0.5  # of the calibration images, for the selection; the rest for the threshold


@dataclass
class CalibrationRequest:
    """What to calibrate: a target risk with guarantee at level ``delta``, or a target coverage."""

    rule: CalibrationRule
    target_risk: float | None = None
    delta: float = DEFAULT_DELTA
    target_coverage: float | None = None
    tune: bool = False
    score: TrustScoreName | None = None
    seed: int = 0
    epsilon: float = DEFAULT_EPSILON  # miscoverage of the conformal prediction sets
    conformal_method: ConformalMethod = "lac"


@dataclass(frozen=True)
class _Plan:
    classes: np.ndarray
    score: TrustScoreName
    policies: tuple[AspectPolicy, ...]  # encoded under these; more than one: the policy is chosen
    spaces: tuple[str, ...]  # encoded in these image spaces; more than one: the space is chosen
    candidates: int  # M of the selection (1: nothing is selected)
    selecting: np.ndarray  # indices of the images the selection sees (empty: no selection)
    thresholding: np.ndarray  # indices of the images the threshold and live trust are fitted on


class LabelSetCalibrator:
    """Picks a label set's acceptance threshold on labelled images and stores it with the label set."""

    def __init__(
        self, repository: LabelSetRepository, engine: ClassificationEngine, settings: Settings
    ) -> None:
        self.repository = repository
        self.engine = engine
        self.max_images = settings.max_calibration_images

    async def calibrate(
        self,
        label_set_id: str,
        labels: Sequence[str],
        images: Images,
        request: CalibrationRequest,
        expected_version: int | None = None,
    ) -> LabelSetView:
        """Encode (under each policy the selection compares), select, pick the threshold, store.

        The images are encoded outside the label-set lock (their embeddings depend only on the model); the
        threshold is then chosen under the lock on the version it is stored with, so concurrent writers
        never make calibration fail (a client that gave ``expected_version`` still gets 409 when stale).
        """
        repo = self.repository
        check_pairs(labels, images)
        if len(images) > self.max_images:
            raise InvalidInput(f"at most {self.max_images} calibration images per request")
        asked = self._plan(repo.entry(label_set_id), labels, request)  # fail fast
        if "independent" in asked.spaces and not await asyncio.to_thread(self.engine.independent_loadable):
            asked = self._plan(repo.entry(label_set_id), labels, request)  # without it
        encoded = {p: await encode_in_spaces(self.engine, images, p, asked.spaces) for p in asked.policies}
        async with repo.lock(label_set_id):
            entry = repo.entry(label_set_id)
            plan = self._plan(entry, labels, request)
            if set(plan.policies) - set(encoded) or set(plan.spaces) - set(encoded[plan.policies[0]][1]):
                raise Conflict("the label set's preprocess or image_space setting changed meanwhile; retry")
            record = repo.next_version(entry, expected_version, trust_score=plan.score)
            view, chosen = entry.view, None
            if plan.candidates > 1:
                chosen = await asyncio.to_thread(
                    select_on_calibration, entry, plan, encoded, self.engine, request
                )
                apply_selection(record, chosen)
                view = await asyncio.to_thread(build_view, record, self.engine, repo.index_params)
            held = plan.thresholding
            embeddings, features = encoded[record.meta.policy]
            # once: the threshold and live trust share it
            scored = self._score(view, embeddings[held], features[record.meta.space][held])
            result = self._threshold(plan, scored, request)
            live = self._live_trust(view, plan, scored, request, result)
            record.meta.calibration = CalibrationRecord(
                **result.model_dump(),
                score=plan.score,
                n_tuning=int(plan.selecting.size),
                selection=chosen,
                alpha=record.meta.alpha,
                visual_temperature=record.meta.visual_temperature,
                label_set_version=record.meta.version,
                basis=view.basis,  # the arrays and numerics are those of the view scored above
                conformal=live.conformal,
                monitor=live.monitor,
            )
            return await repo.commit(record, entry.record.meta.version)

    def _score(self, view: LabelSetView, embeddings: np.ndarray, features: np.ndarray) -> ScoredBatch:
        return view.score(
            embeddings, features, logit_scale=self.engine.logit_scale, logit_bias=self.engine.logit_bias
        )

    def _threshold(self, plan: _Plan, scored: ScoredBatch, request: CalibrationRequest) -> CalibrationResult:
        conf, correct = _judged(plan, scored)
        try:
            if request.rule == "target_risk":
                assert request.target_risk is not None  # checked by _check_size
                result = calibrate_target_risk(conf, correct, request.target_risk, request.delta)
                if plan.selecting.size:
                    note = (
                        f" The label set's settings were selected among {plan.candidates} candidates on "
                        f"{plan.selecting.size} other calibration images, disjoint from these {correct.size}."
                    )
                    result = result.model_copy(update={"guarantee": result.guarantee + note})
                return result
            assert request.target_coverage is not None
            return calibrate_target_coverage(conf, correct, request.target_coverage)
        except CalibrationError as exc:
            raise InvalidInput(
                str(exc),
                code="calibration_impossible",
                details={
                    "min_samples": exc.min_samples,
                    "n": int(correct.size),
                    "accuracy": float(correct.mean()),
                },
            ) from exc

    def _live_trust(
        self,
        view: LabelSetView,
        plan: _Plan,
        scored: ScoredBatch,
        request: CalibrationRequest,
        result: CalibrationResult,
    ) -> LiveTrustFit:
        """Conformal threshold and monitor reference on the threshold's images, scored as served."""
        conf, correct = _judged(plan, scored)
        return fit_live_trust(
            scored,
            plan.classes[plan.thresholding],
            has_prototype=np.asarray(view.has_prototype),
            score=plan.score,
            confidence=conf,
            correct=correct.astype(bool),
            accepted=result.accepts(conf),
            epsilon=request.epsilon,
            method=request.conformal_method,
            selected_among=plan.candidates,
            selection_images=int(plan.selecting.size),
        )

    def _plan(self, entry: Entry, labels: Sequence[str], request: CalibrationRequest) -> _Plan:
        """Classes, score, the policies to encode under and the selection's M for the label set's current
        version; ``InvalidInput`` for unknown classes, missing prototypes or too few images."""
        meta, view = entry.record.meta, entry.view
        classes = class_indices(meta, labels)
        score = request.score or meta.trust_score
        if score != "msp" and not view.has_prototype.all():
            missing = [meta.labels[i] for i in np.flatnonzero(~view.has_prototype)]
            raise InvalidInput(
                f"score {score!r} needs a prototype for every class; add support images for {missing[:10]} "
                "first, or calibrate score 'msp'",
                code="missing_prototypes",
            )
        select_alpha = score in SELECTED_SCORES and (request.tune or selects_alpha(meta))
        arrays = entry.record.arrays
        policies: tuple[AspectPolicy, ...] = (meta.policy,)
        if meta.preprocess == "auto" and view.has_prototype.any():
            complete = complete_policies(arrays, arrays[COUNTS])
            policies = tuple(p for p in policies_for("auto") if p == meta.policy or p in complete)
        spaces: tuple[str, ...] = (meta.space,)
        if meta.image_space == "auto" and view.has_prototype.any() and score != "msp":
            complete_sp = complete_spaces(arrays, arrays[COUNTS], policies)
            available = label_set_spaces(self.engine, meta)
            spaces = tuple(s for s in available if s == meta.space or s in complete_sp)
        everything = np.arange(classes.size)
        if len(policies) == 1 and len(spaces) == 1 and not select_alpha:
            plan = _Plan(classes, score, (meta.policy,), spaces, 1, everything[:0], everything)
        else:
            m = len(selection_grid(meta.alpha, spaces=spaces, extra=_anchor(meta))) * len(policies)
            selecting, thresholding = selection_split(classes, request.seed)
            plan = _Plan(classes, score, policies, spaces, m, selecting, thresholding)
        _check_size(request, plan.thresholding.size, split=plan.selecting.size > 0)
        return plan


def _judged(plan: _Plan, scored: ScoredBatch) -> tuple[np.ndarray, np.ndarray]:
    """The decision score of each threshold image and whether the prediction it judges is right (0/1)."""
    predicted = scored.refined_predictions if judges_refined_prediction(plan.score) else scored.predictions
    classes = plan.classes[plan.thresholding]
    return scored.scores[plan.score], (np.asarray(predicted) == classes).astype(np.int64)


def selection_split(classes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection indices, threshold indices): a seeded, class-stratified split, ``SELECTION_FRACTION`` of
    each class's images to the selection (a class with one image goes to the threshold part)."""
    rng = np.random.default_rng(seed)
    selecting: list[np.ndarray] = []
    for c in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == c))
        selecting.append(members[: int(members.size * SELECTION_FRACTION)])
    picked = np.sort(np.concatenate(selecting)) if selecting else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(classes.size), picked)
    return picked.astype(np.int64), rest.astype(np.int64)


def _anchor(meta: LabelSetMeta) -> Candidate:
    """What the label set serves now (α in its space; α = 0: MSP): the anchored rule's starting point."""
    return Candidate(meta.alpha, meta.space) if meta.alpha > 0 else Candidate()


def select_on_calibration(
    entry: Entry,
    plan: _Plan,
    encoded: Encoded,
    engine: ClassificationEngine,
    request: CalibrationRequest,
) -> LabelSetSelection:
    """Policy, image space and α chosen on the selection part of the calibration images
    (``app.labelsets.selection``, anchored on what the label set serves now): each policy's images against
    that policy's prototypes in each space — the served ones for the label set's policy and space, the kept
    support encodings' for the others."""
    meta, view = entry.record.meta, entry.view
    picked = plan.selecting
    encodings: dict[AspectPolicy, PolicyEncodings] = {}
    for policy in plan.policies:
        embeddings, features = encoded[policy]
        encodings[policy] = calibration_encodings(
            embeddings[picked],
            {space: features[space][picked] for space in plan.spaces},
            plan.classes[picked],
            np.asarray(view.text_embeddings),
            {space: _prototypes_under(entry, meta, view, policy, space) for space in plan.spaces},
            logit_scale=engine.logit_scale,
            logit_bias=engine.logit_bias,
        )
    chosen = select_for_label_set(
        encodings,
        default_policy=meta.policy,
        evidence="calibration",
        score=plan.score,
        visual_temperature=meta.visual_temperature,
        fallback_alpha=meta.alpha,
        seed=request.seed,
        anchor=_anchor(meta),
        current_space=meta.space,
    )
    if not (plan.score in SELECTED_SCORES and (request.tune or selects_alpha(meta))):
        chosen = chosen.model_copy(update={"alpha": meta.alpha})  # only the policy was chosen
    return chosen


def _prototypes_under(
    entry: Entry, meta: LabelSetMeta, view: LabelSetView, policy: AspectPolicy, space: str
) -> tuple[np.ndarray, np.ndarray]:
    if (policy, space) == (meta.policy, meta.space):
        return np.asarray(view.prototypes), np.asarray(view.has_prototype)
    sums, counts = prototype_state(entry.record.arrays, policy, len(meta.labels), space)
    return l2_normalize(sums), counts > 0


def _check_size(request: CalibrationRequest, n_threshold: int, split: bool = False) -> None:
    if request.rule == "target_risk":
        if request.target_risk is None or not 0 < request.target_risk < 1:
            raise InvalidInput("rule target_risk needs target_risk in (0, 1)")
        if not 0 < request.delta < 1:
            raise InvalidInput("delta must be in (0, 1)")
        needed = min_calibration_size(request.target_risk, request.delta)
        if n_threshold < needed:
            split_note = (
                " (the label set selects its settings on the other part of the calibration images, "
                f"{SELECTION_FRACTION:.0%} per class; the threshold uses only the rest)"
                if split
                else ""
            )
            raise InvalidInput(
                f"{n_threshold} calibration images cannot support selective risk ≤ "
                f"{request.target_risk:g} at δ = {request.delta:g}: even with zero errors the "
                f"Clopper-Pearson bound needs at least "
                f"{needed} accepted images{split_note}; expect far more for a useful coverage",
                code="calibration_set_too_small",
                details={"min_samples": needed, "n": n_threshold},
            )
    else:
        if request.target_coverage is None or not 0 < request.target_coverage <= 1:
            raise InvalidInput("rule target_coverage needs target_coverage in (0, 1]")
        if n_threshold < 1:
            raise InvalidInput("no calibration images", code="calibration_set_too_small")
