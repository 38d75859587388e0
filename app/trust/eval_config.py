"""What defines one ``trustserve eval`` run (TrustVLM failure-detection evaluation): ``EvalConfig``, stored
in the summary JSON, and the default encoding-cache directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.vlm.preprocessing import ASPECT_POLICIES
from app.vlm.presets import DEFAULT_MODELS_DIR

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trustserve" / "eval"


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines one evaluation run (stored in the summary JSON)."""

    model: str
    dataset: str
    shots: tuple[int, ...] = (16,)
    draws: int = 3
    test_limit: int | None = 2000
    alpha: float | None = None  # None: the preset's trust.alpha
    visual_temperature: float | None = None  # None: the preset's trust.visual_temperature
    temperature: float = 1.0
    alpha_sweep: tuple[float, ...] = ()
    tv_sweep: tuple[float, ...] = ()
    tune: bool = False
    calib_size: int = 1000
    preprocess: str | None = None  # aspect policy (crop | letterbox); None: the preset's
    image_spaces: tuple[str, ...] | None = None  # the preset's spaces to load ("own", extras); None: all
    bootstrap: int = 1000  # paired bootstrap resamples: test-set intervals against MSP (and ≤ 400 for the
    # selection rule's standard errors)
    invert: bool | None = None
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    dtype: str = "auto"
    runtime: str = "auto"  # as TRUSTSERVE_RUNTIME
    precision: str = "fp32"  # as TRUSTSERVE_PRECISION
    calibration_dir: Path | None = None  # int8 calibration images (never the test split)
    models_dir: Path = DEFAULT_MODELS_DIR
    cache_dir: Path | None = DEFAULT_CACHE_DIR

    def __post_init__(self) -> None:
        if not self.shots or min(self.shots) < 1:
            raise ValueError(f"shots must be positive integers, got {self.shots}")
        if self.draws < 1:
            raise ValueError(f"draws must be ≥ 1, got {self.draws}")
        temperatures = (self.visual_temperature or 1.0, self.temperature, *self.tv_sweep)
        if min(temperatures) <= 0:
            raise ValueError("temperatures must be > 0")
        if self.tune and self.calib_size < 10:
            raise ValueError("tuning needs a calibration split of at least 10 images")
        if self.preprocess is not None and self.preprocess not in ASPECT_POLICIES:
            raise ValueError(f"preprocess must be one of {ASPECT_POLICIES}, got {self.preprocess!r}")
        if self.bootstrap < 0:
            raise ValueError("bootstrap must be ≥ 0")
