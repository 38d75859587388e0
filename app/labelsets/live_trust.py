"""The label-set side of live trust monitoring and conformal prediction sets.

Calibration calls ``fit_live_trust`` on the images its threshold was chosen on (after the threshold):
it fits the split-conformal threshold (``app.trust.conformal``) and the monitor's reference
(``app.trust.monitoring``). Both are stored inside the calibration record, so every change that drops the
decision threshold drops them too. Classify calls ``prediction_sets_for`` and ``record_live_answers``.

Which probabilities the sets use (``app.engine.scoring.conformal_probabilities``): TrustVLM*'s
q/(1 + α) when every class has a prototype, else the zero-shot softmax; calibration and classify call the
same function on the same scoring output, so the threshold is applied to the numbers it was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.engine.scoring import ScoredBatch, conformal_probabilities
from app.labelsets.models import CalibrationRecord, LabelSetView
from app.trust.conformal import (
    DEFAULT_EPSILON,
    ConformalMethod,
    ConformalThreshold,
    fit_conformal,
    prediction_sets,
)
from app.trust.monitoring import MonitorReference, TrustMonitor, fit_monitor_reference


@dataclass(frozen=True)
class LiveTrustFit:
    """What calibration adds to its record besides the decision threshold."""

    conformal: ConformalThreshold
    monitor: MonitorReference


def fit_live_trust(
    scored: ScoredBatch,
    classes: np.ndarray,
    *,
    has_prototype: np.ndarray,
    score: str,
    confidence: np.ndarray,
    correct: np.ndarray,
    accepted: np.ndarray,
    epsilon: float = DEFAULT_EPSILON,
    method: ConformalMethod = "lac",
    selected_among: int = 1,
    selection_images: int = 0,
) -> LiveTrustFit:
    """Conformal threshold and monitor reference from one calibration's scored images (``selected_among``
    candidates compared by a selection on ``selection_images`` disjoint images; see
    ``app.trust.conformal.guarantee_text``)."""
    probabilities, source = conformal_probabilities(scored, has_prototype)
    return LiveTrustFit(
        conformal=fit_conformal(
            probabilities,
            classes,
            epsilon,
            method,
            probabilities_from=source,
            selected_among=selected_among,
            selection_images=selection_images,
        ),
        monitor=fit_monitor_reference(confidence, correct, accepted, score),
    )


@dataclass(frozen=True)
class PredictionSet:
    """One image's conformal set: class indices, most probable first."""

    indices: list[int]
    conformal: ConformalThreshold


def applicable_calibration(view: LabelSetView) -> CalibrationRecord | None:
    """The label set's calibration when it applies to what is served now (``calibration_problem`` is the
    decision's own test: runtime, precision or adapted prototypes changed); else None."""
    return view.calibration if view.calibration_problem is None else None


def prediction_sets_for(view: LabelSetView, scored: ScoredBatch) -> list[PredictionSet] | None:
    """The conformal set of every image, or None when the label set has no conformal threshold that
    applies (not calibrated, calibrated before sets existed, or the calibration no longer applies)."""
    cal = applicable_calibration(view)
    if cal is None or cal.conformal is None:
        return None
    probabilities, source = conformal_probabilities(scored, view.has_prototype)
    if source != cal.conformal.probabilities:  # cannot happen while prototypes drop the calibration
        return None
    sets = prediction_sets(probabilities, cal.conformal.threshold, cal.conformal.method)
    return [PredictionSet([int(i) for i in s], cal.conformal) for s in sets]


def record_live_answers(
    monitor: TrustMonitor,
    view: LabelSetView,
    confidences: Sequence[float | None],
    accepted: Sequence[bool | None],
) -> None:
    """Append a calibrated label set's answers to its live window (no-op when no calibration applies)."""
    cal = applicable_calibration(view)
    if cal is None or cal.monitor is None or not confidences:
        return
    monitor.observe(
        view.id,
        model=view.model,
        version=view.version,
        identity=cal.identity(),
        reference=cal.monitor,
        scores=np.array([np.nan if c is None else c for c in confidences], dtype=np.float64),
        accepted=np.array([bool(a) for a in accepted], dtype=bool),
    )


def stale_windows(monitor: TrustMonitor, views: dict[str, LabelSetView]) -> list[str]:
    """Monitored label sets that are gone or whose calibration changed since their window started."""
    stale = []
    for label_set_id in monitor.ids():
        view = views.get(label_set_id)
        cal = applicable_calibration(view) if view is not None else None
        if cal is None or cal.monitor is None or cal.identity() != monitor.identity(label_set_id):
            stale.append(label_set_id)
    return stale
