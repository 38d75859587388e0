"""Calibrating a label set's reject rule on labelled images, in three steps:

1. ``choose_settings``: with ``tune``, a seeded stratified half of the images chooses the settings the
   score depends on (α, and T_v for TrustVLM* only) by AURC; what was chosen and the evidence go into the
   record (``TuningEvidence``). A later selection step (image space, preprocessing policy) belongs here.
2. the threshold: ``app.trust.calibration`` (SGR target risk with a guarantee, or target coverage) on the
   other images, scored by the label set's own ``LabelSetView.score`` — the function classify uses.
3. the record: the rule's result, the settings, and the basis the scores were computed from
   (``app.labelsets.basis``), stored with the label set as a new version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.engine.scoring import ScoredBatch
from app.errors import InvalidInput
from app.labelsets.models import CalibrationRecord, LabelSetView, TuningEvidence
from app.labelsets.repository import Entry, LabelSetRepository
from app.labelsets.support import Images, check_pairs, class_indices, encode
from app.trust.calibration import (
    DEFAULT_DELTA,
    CalibrationError,
    CalibrationResult,
    CalibrationRule,
    calibrate_target_coverage,
    calibrate_target_risk,
    min_calibration_size,
    tune_trustvlm,
)
from app.trust.scores import TrustScoreName, judges_refined_prediction


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


@dataclass(frozen=True)
class ChosenSettings:
    """The settings the threshold is chosen for, and how they were chosen (None: the label set's own)."""

    alpha: float
    visual_temperature: float
    evidence: TuningEvidence | None = None


@dataclass(frozen=True)
class _Plan:
    classes: np.ndarray
    score: TrustScoreName
    threshold_idx: np.ndarray
    tuning_idx: np.ndarray


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
        """Encode, choose the settings (with ``tune``), pick the threshold, store the record.

        The images are encoded outside the label-set lock (their embeddings depend only on the model); the
        threshold is then chosen under the lock on the version it is stored with, so concurrent writers
        never make calibration fail (a client that gave ``expected_version`` still gets 409 when stale).
        """
        repo = self.repository
        check_pairs(labels, images)
        if len(images) > self.max_images:
            raise InvalidInput(f"at most {self.max_images} calibration images per request")
        self._plan(repo.entry(label_set_id), labels, request, len(images))  # fail fast
        embeddings, features = await encode(self.engine, images)
        async with repo.lock(label_set_id):
            entry = repo.entry(label_set_id)
            plan = self._plan(entry, labels, request, len(images))
            view = entry.view
            chosen = self.choose_settings(view, plan, embeddings, features)
            result = self._threshold(view, plan, chosen, embeddings, features, request)
            record = repo.next_version(
                entry, expected_version, alpha=chosen.alpha, visual_temperature=chosen.visual_temperature
            )
            record.meta.calibration = CalibrationRecord(
                **result.model_dump(),
                score=plan.score,
                n_tuning=int(plan.tuning_idx.size),
                tuning=chosen.evidence,
                alpha=chosen.alpha,
                visual_temperature=chosen.visual_temperature,
                label_set_version=record.meta.version,
                basis=view.basis,  # the arrays and numerics are those of the view scored above
            )
            record.meta.trust_score = plan.score
            return await repo.commit(record, entry.record.meta.version)

    def choose_settings(
        self, view: LabelSetView, plan: _Plan, embeddings: np.ndarray, features: np.ndarray
    ) -> ChosenSettings:
        """The label set's (α, T_v), or — with tuning images — the ones with the best AURC on them. Only
        what the score depends on is tuned: α for TrustVLM, α and T_v for TrustVLM*; the rest stays."""
        if not plan.tuning_idx.size:
            return ChosenSettings(view.alpha, view.visual_temperature)
        idx = plan.tuning_idx
        base = self._score(view, embeddings[idx], features[idx])
        tuned = tune_trustvlm(
            base.logits,
            features[idx],
            np.asarray(view.prototypes),
            np.asarray(view.has_prototype),
            plan.classes[idx],
            visual_temperature=view.visual_temperature,
            score="trustvlm_star" if judges_refined_prediction(plan.score) else "trustvlm",
            prototype_topk=view.serving_topk(features[idx]),
        )
        evidence = TuningEvidence(tuned=list(tuned.tuned), n=int(idx.size), grid=tuned.grid)
        return ChosenSettings(tuned.alpha, tuned.visual_temperature, evidence)

    def _score(
        self,
        view: LabelSetView,
        embeddings: np.ndarray,
        features: np.ndarray,
        chosen: ChosenSettings | None = None,
    ) -> ScoredBatch:
        return view.score(
            embeddings,
            features,
            logit_scale=self.engine.logit_scale,
            logit_bias=self.engine.logit_bias,
            alpha=chosen.alpha if chosen is not None else None,
            visual_temperature=chosen.visual_temperature if chosen is not None else None,
        )

    def _threshold(
        self,
        view: LabelSetView,
        plan: _Plan,
        chosen: ChosenSettings,
        embeddings: np.ndarray,
        features: np.ndarray,
        request: CalibrationRequest,
    ) -> CalibrationResult:
        idx = plan.threshold_idx
        scored = self._score(view, embeddings[idx], features[idx], chosen)
        conf = scored.scores[plan.score]
        refined = judges_refined_prediction(plan.score)
        predicted = scored.refined_predictions if refined else scored.predictions
        correct = (predicted == plan.classes[idx]).astype(np.int64)
        try:
            if request.rule == "target_risk":
                assert request.target_risk is not None  # checked by _check_size
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

    def _plan(self, entry: Entry, labels: Sequence[str], request: CalibrationRequest, n_images: int) -> _Plan:
        """Classes, score, threshold and tuning indices for the label set's current version;
        ``InvalidInput`` for unknown classes, missing prototypes or too few images."""
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
        threshold_idx, tuning_idx = split_for_tuning(classes, request.tune and score != "msp", request.seed)
        _check_size(request, len(threshold_idx), n_images)
        return _Plan(classes, score, threshold_idx, tuning_idx)


def _check_size(request: CalibrationRequest, n_threshold: int, n_total: int) -> None:
    if request.rule == "target_risk":
        if request.target_risk is None or not 0 < request.target_risk < 1:
            raise InvalidInput("rule target_risk needs target_risk in (0, 1)")
        if not 0 < request.delta < 1:
            raise InvalidInput("delta must be in (0, 1)")
        needed = min_calibration_size(request.target_risk, request.delta)
        if n_threshold < needed:
            split_note = (
                f" (tuning uses half of them, so send at least {2 * needed})" if n_threshold < n_total else ""
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


def split_for_tuning(classes: np.ndarray, tune: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(threshold indices, tuning indices): a seeded per-class half for tuning when ``tune``."""
    everything = np.arange(classes.size)
    if not tune:
        return everything, np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    tuning = []
    for c in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == c))
        tuning.append(members[: members.size // 2])
    tuning_idx = np.sort(np.concatenate(tuning)) if tuning else np.zeros(0, np.int64)
    return np.setdiff1d(everything, tuning_idx), tuning_idx
