"""Live trust monitoring per calibrated label set: the calibration-time distribution of the decision
score against a bounded window of live scores.

At calibration, ``fit_monitor_reference`` keeps a sketch of the decision score's distribution
(``app.trust.drift.reference_quantiles``), the ATC threshold (``app.trust.atc``) and the calibration
coverage and accuracy; it is stored inside the calibration record, so whatever invalidates the decision
threshold drops it too. At serve time ``TrustMonitor.observe`` appends each answer's score and decision to
the label set's live window; ``snapshot`` compares window and reference: live acceptance rate vs
calibration coverage, ATC estimated accuracy vs calibration accuracy, PSI and KS drift.

Bounds: a window holds at most ``window_size`` answers and only those of the last ``window_seconds``
(``WINDOW_BYTES_PER_SAMPLE`` bytes each, preallocated); at most ``max_label_sets`` windows exist (the least
recently used is dropped first), so memory is bounded in total. The monitor is per process: each replica
watches its own traffic.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.trust.atc import atc_estimate, fit_atc_threshold
from app.trust.drift import ks_statistic, psi, reference_quantiles

WINDOW_BYTES_PER_SAMPLE = 8 + 8 + 1  # time (float64), score (float64), accepted (bool)


class MonitorReference(BaseModel):
    """What live traffic is compared with, fitted on the calibration images of a label set."""

    model_config = ConfigDict(extra="forbid")
    score: str = Field(description="the decision score the reference describes")
    quantiles: list[float] = Field(description="order statistics of the calibration scores (a sketch)")
    atc_threshold: float = Field(description="ATC threshold t (Garg et al., ICLR 2022) on the score")
    calibration_accuracy: float = Field(description="accuracy of the judged prediction on calibration")
    calibration_coverage: float = Field(description="fraction of calibration images accepted")
    n: int = Field(description="calibration images")


def fit_monitor_reference(
    scores: np.ndarray, correct: np.ndarray, accepted: np.ndarray, score: str
) -> MonitorReference:
    """The reference of one calibration: score sketch, ATC threshold, accuracy and coverage."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = np.asarray(correct).ravel().astype(bool)
    a = np.asarray(accepted).ravel().astype(bool)
    finite = s[np.isfinite(s)]
    return MonitorReference(
        score=score,
        quantiles=[float(x) for x in reference_quantiles(finite if finite.size else np.zeros(1))],
        atc_threshold=fit_atc_threshold(s, c),
        calibration_accuracy=float(c.mean()),
        calibration_coverage=float(a.mean()),
        n=int(s.size),
    )


@dataclass(frozen=True)
class MonitorSettings:
    """Window and memory bounds (``Settings.monitor_*``)."""

    window_size: int = 1000
    window_seconds: float = 3600.0
    min_samples: int = 300  # PSI under no shift ≈ χ²₉ (1/n + 1/m): at n = 300, m ≥ 300, P(> 0.25) < 1e-4
    max_label_sets: int = 256

    def bytes_per_label_set(self, reference_points: int = 256) -> int:
        """Preallocated window plus the reference sketch (numbers only; object overhead excluded)."""
        return self.window_size * WINDOW_BYTES_PER_SAMPLE + 8 * reference_points


@dataclass(frozen=True)
class MonitorSnapshot:
    """The live numbers of one label set at one moment. Rates are fractions; drift is NaN (and
    ``enough`` False) while the window holds fewer than ``min_samples`` finite scores."""

    label_set: str
    model: str
    version: int
    score: str
    samples: int
    undefined_scores: int
    window_start: float | None
    window_end: float | None
    acceptance_rate: float
    calibration_coverage: float
    estimated_accuracy: float
    calibration_accuracy: float
    psi: float
    ks: float
    min_samples: int
    enough: bool


class LiveWindow:
    """A ring buffer of (time, score, accepted) with a fixed capacity; readers drop entries older than a
    maximum age."""

    def __init__(self, capacity: int) -> None:
        self.times = np.full(capacity, -np.inf)
        self.scores = np.zeros(capacity)
        self.accepted = np.zeros(capacity, dtype=bool)
        self._next = 0
        self._count = 0

    def add(self, now: float, scores: np.ndarray, accepted: np.ndarray) -> None:
        s = np.asarray(scores, dtype=np.float64).ravel()
        a = np.asarray(accepted, dtype=bool).ravel()
        cap = self.times.size
        if s.size > cap:
            s, a = s[-cap:], a[-cap:]
        slots = (self._next + np.arange(s.size)) % cap
        self.times[slots] = now
        self.scores[slots] = s
        self.accepted[slots] = a
        self._next = int((self._next + s.size) % cap)
        self._count = min(self._count + s.size, cap)

    def recent(self, now: float, max_age_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, scores, accepted) of the entries no older than ``max_age_s``."""
        keep = self.times >= now - max_age_s
        return self.times[keep], self.scores[keep], self.accepted[keep]


@dataclass
class _Monitored:
    model: str
    version: int
    identity: str
    reference: MonitorReference
    reference_scores: np.ndarray
    window: LiveWindow


class TrustMonitor:
    """Per-label-set live windows, bounded in count, age and number of label sets (thread-safe)."""

    def __init__(
        self, settings: MonitorSettings | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings or MonitorSettings()
        self._clock = clock
        self._entries: OrderedDict[str, _Monitored] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _now(self) -> float:
        return float(self._clock())

    def observe(
        self,
        label_set_id: str,
        *,
        model: str,
        version: int,
        identity: str,
        reference: MonitorReference,
        scores: np.ndarray,
        accepted: np.ndarray,
    ) -> None:
        """Append answers of one calibrated label set. ``identity`` names the calibration (a new one
        starts a new window: the old scores were judged against another reference)."""
        now = self._now()
        with self._lock:
            entry = self._entries.get(label_set_id)
            if entry is None or entry.identity != identity:
                entry = _Monitored(
                    model=model,
                    version=version,
                    identity=identity,
                    reference=reference,
                    reference_scores=np.asarray(reference.quantiles, dtype=np.float64),
                    window=LiveWindow(self.settings.window_size),
                )
                self._entries[label_set_id] = entry
            entry.version = version
            entry.window.add(now, scores, accepted)
            self._entries.move_to_end(label_set_id)
            while len(self._entries) > self.settings.max_label_sets:
                self._entries.popitem(last=False)

    def forget(self, label_set_id: str) -> None:
        """Drop a label set's window (deleted, or its calibration is gone)."""
        with self._lock:
            self._entries.pop(label_set_id, None)

    def identity(self, label_set_id: str) -> str | None:
        entry = self._entries.get(label_set_id)
        return entry.identity if entry is not None else None

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def snapshot(self, label_set_id: str) -> MonitorSnapshot | None:
        """The label set's live numbers now; None when it has no window."""
        now = self._now()
        with self._lock:
            entry = self._entries.get(label_set_id)
            if entry is None:
                return None
            times, scores, accepted = entry.window.recent(now, self.settings.window_seconds)
        return self._summarise(label_set_id, entry, times, scores, accepted)

    def snapshots(self) -> list[MonitorSnapshot]:
        """Every monitored label set, least recently observed first."""
        return [s for s in (self.snapshot(i) for i in self.ids()) if s is not None]

    def _summarise(
        self,
        label_set_id: str,
        entry: _Monitored,
        times: np.ndarray,
        scores: np.ndarray,
        accepted: np.ndarray,
    ) -> MonitorSnapshot:
        ref = entry.reference
        finite = scores[np.isfinite(scores)]
        enough = finite.size >= self.settings.min_samples
        nan = float("nan")
        return MonitorSnapshot(
            label_set=label_set_id,
            model=entry.model,
            version=entry.version,
            score=ref.score,
            samples=int(scores.size),
            undefined_scores=int(scores.size - finite.size),
            window_start=float(times.min()) if times.size else None,
            window_end=float(times.max()) if times.size else None,
            acceptance_rate=float(accepted.mean()) if accepted.size else nan,
            calibration_coverage=ref.calibration_coverage,
            estimated_accuracy=atc_estimate(scores, ref.atc_threshold),
            calibration_accuracy=ref.calibration_accuracy,
            psi=psi(finite, entry.reference_scores) if enough else nan,
            ks=ks_statistic(finite, entry.reference_scores) if enough else nan,
            min_samples=self.settings.min_samples,
            enough=bool(enough),
        )
