"""Calibrating a label set's reject rule on labelled images, in four steps:

1. ``select_on_calibration`` (when the label set self-selects, or with ``tune``): the aspect policy
   (``preprocess: auto``: the images are encoded under both) and α (0 = MSP) are chosen on ALL the
   calibration images by the cross-fitted one-standard-error rule of ``app.labelsets.selection``; the
   choice and every candidate's evidence go into the record. T_v is never touched.
2. the threshold: ``app.trust.calibration`` on the same images, scored by the label set's own
   ``LabelSetView.score`` — the function classify uses. After a selection among M candidates, SGR is
   taken at δ / M (``calibrate_selected_target_risk``: by the union bound the guarantee holds for whichever
   candidate was chosen on these images); target coverage has no guarantee to protect.
3. the record: the rule's result, the settings, and the basis the scores were computed from
   (``app.labelsets.basis``), stored with the label set as a new version.
4. ``live_trust``: on the same images, the conformal threshold of the prediction sets and the live
   monitor's reference (``app.labelsets.live_trust``), stored inside the record so that whatever drops the
   threshold drops them too. After a selection among several candidates the conformal threshold is fitted
   on the images the selection saw (no split): its coverage is then approximate, not the exact
   finite-sample guarantee (see docs/TRUST_MONITORING.md).
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
from app.labelsets.support import Images, check_pairs, class_indices, encode
from app.labelsets.support_features import complete_policies, prototype_state
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
from app.trust.selection import calibrate_selected_target_risk
from app.vlm.preprocessing import AspectPolicy

Encoded = Mapping[AspectPolicy, tuple[np.ndarray, np.ndarray]]  # policy -> (embeddings, aux features)


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
    candidates: int  # M of the selection (1: nothing is selected)


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
        encoded = {p: await encode(self.engine, images, p) for p in asked.policies}
        async with repo.lock(label_set_id):
            entry = repo.entry(label_set_id)
            plan = self._plan(entry, labels, request)
            if set(plan.policies) - set(encoded):
                raise Conflict("the label set's preprocess setting changed meanwhile; retry")
            record = repo.next_version(entry, expected_version, trust_score=plan.score)
            view, chosen = entry.view, None
            if plan.candidates > 1:
                chosen = await asyncio.to_thread(
                    select_on_calibration, entry, plan, encoded, self.engine, request
                )
                apply_selection(record, chosen)
                view = await asyncio.to_thread(build_view, record, self.engine, repo.index_params)
            embeddings, features = encoded[record.meta.policy]
            scored = self._score(view, embeddings, features)  # once: the threshold and live trust share it
            result = self._threshold(plan, scored, request)
            live = self._live_trust(view, plan, scored, request, result)
            record.meta.calibration = CalibrationRecord(
                **result.model_dump(),
                score=plan.score,
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
                if plan.candidates > 1:
                    return calibrate_selected_target_risk(
                        conf, correct, request.target_risk, request.delta, plan.candidates
                    )
                return calibrate_target_risk(conf, correct, request.target_risk, request.delta)
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
            plan.classes,
            has_prototype=np.asarray(view.has_prototype),
            score=plan.score,
            confidence=conf,
            correct=correct.astype(bool),
            accepted=result.accepts(conf),
            epsilon=request.epsilon,
            method=request.conformal_method,
            selected_among=plan.candidates,
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
        policies: tuple[AspectPolicy, ...] = (meta.policy,)
        if meta.preprocess == "auto" and view.has_prototype.any():
            complete = complete_policies(entry.record.arrays, entry.record.arrays[COUNTS])
            policies = tuple(p for p in policies_for("auto") if p == meta.policy or p in complete)
        if len(policies) == 1 and not select_alpha:
            plan = _Plan(classes, score, (meta.policy,), 1)
        else:
            plan = _Plan(classes, score, policies, len(selection_grid(meta.alpha)) * len(policies))
        _check_size(request, classes.size, plan.candidates)
        return plan


def _judged(plan: _Plan, scored: ScoredBatch) -> tuple[np.ndarray, np.ndarray]:
    """The decision score of each image and whether the prediction it judges is right (int 0/1)."""
    predicted = scored.refined_predictions if judges_refined_prediction(plan.score) else scored.predictions
    return scored.scores[plan.score], (np.asarray(predicted) == plan.classes).astype(np.int64)


def select_on_calibration(
    entry: Entry,
    plan: _Plan,
    encoded: Encoded,
    engine: ClassificationEngine,
    request: CalibrationRequest,
) -> LabelSetSelection:
    """Policy and α chosen on the calibration images (``app.labelsets.selection``): each policy's images
    against that policy's prototypes — the served ones for the label set's policy, the kept support
    encodings' for the other."""
    meta, view = entry.record.meta, entry.view
    encodings: dict[AspectPolicy, PolicyEncodings] = {}
    for policy in plan.policies:
        prototypes, has_prototype = _prototypes_under(entry, meta, view, policy)
        embeddings, features = encoded[policy]
        encodings[policy] = calibration_encodings(
            embeddings,
            features,
            plan.classes,
            np.asarray(view.text_embeddings),
            prototypes,
            has_prototype,
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
    )
    if not (plan.score in SELECTED_SCORES and (request.tune or selects_alpha(meta))):
        chosen = chosen.model_copy(update={"alpha": meta.alpha})  # only the policy was chosen
    return chosen


def _prototypes_under(
    entry: Entry, meta: LabelSetMeta, view: LabelSetView, policy: AspectPolicy
) -> tuple[np.ndarray, np.ndarray]:
    if policy == meta.policy:
        return np.asarray(view.prototypes), np.asarray(view.has_prototype)
    sums, counts = prototype_state(entry.record.arrays, policy, len(meta.labels))
    return l2_normalize(sums), counts > 0


def _check_size(request: CalibrationRequest, n_threshold: int, candidates: int = 1) -> None:
    if request.rule == "target_risk":
        if request.target_risk is None or not 0 < request.target_risk < 1:
            raise InvalidInput("rule target_risk needs target_risk in (0, 1)")
        if not 0 < request.delta < 1:
            raise InvalidInput("delta must be in (0, 1)")
        needed = min_calibration_size(request.target_risk, request.delta / candidates)
        if n_threshold < needed:
            split_note = (
                f" (the selection compares {candidates} candidates on them, so the bound is taken at "
                f"δ/{candidates})"
                if candidates > 1
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
