"""Multimodal checkpoints: ``model.safetensors`` (weights) + ``config.json`` (everything else).

``config.json`` holds the architecture (``FusionSpec``: modalities, encoders, preprocessing), the class
names, the training recipe, validation metrics and the calibrated reject threshold. Loading reads JSON
and safetensors only — nothing is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError

from app.multimodal.specs import FusionSpec
from app.trust.calibration import CalibrationRule

if TYPE_CHECKING:  # torch only where a model is built (training, evaluation, export), not to serve
    from app.multimodal.model import LateFusionClassifier

FORMAT = "trustserve-acr/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded (missing files, invalid config, mismatched weights)."""


class CalibrationInfo(BaseModel):
    """The reject rule: accept when ``score`` ≥ ``threshold`` (null threshold = not calibrated)."""

    model_config = ConfigDict(extra="forbid")
    score: str = "msp"
    threshold: float | None = None
    rule: CalibrationRule | None = None
    target: float | None = None
    delta: float | None = None
    guarantee: str | None = None
    coverage: float | None = None
    risk: float | None = None
    risk_upper_bound: float | None = None
    n: int | None = None
    note: str | None = None

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None


class CheckpointConfig(BaseModel):
    """Everything needed to rebuild, preprocess for, and trust a trained multimodal classifier."""

    model_config = ConfigDict(extra="forbid")
    format: str = FORMAT
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str = ""
    fusion: FusionSpec
    class_names: list[str]
    training: dict[str, Any] = Field(default_factory=dict)
    validation_metrics: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationInfo = Field(default_factory=CalibrationInfo)

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointConfig:
        if self.format != FORMAT:
            raise ValueError(f"unsupported checkpoint format {self.format!r}, expected {FORMAT!r}")
        if len(self.class_names) != self.fusion.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for a model with {self.fusion.num_classes} classes"
            )
        return self


@dataclass
class LoadedCheckpoint:
    model: LateFusionClassifier
    config: CheckpointConfig
    path: Path


def save_checkpoint(folder: Path, model: LateFusionClassifier, config: CheckpointConfig) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))  # no metadata map: its key order is not stable across runs
    (folder / CONFIG_FILE).write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    return folder


def read_config(folder: Path) -> CheckpointConfig:
    """Parse and validate ``config.json``."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}")
    try:
        return CheckpointConfig.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise CheckpointError(f"{path}: invalid checkpoint config: {exc}") from exc


def load_checkpoint(folder: Path) -> LoadedCheckpoint:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly (eval mode, CPU)."""
    from safetensors.torch import load_file

    from app.multimodal.model import LateFusionClassifier

    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")
    try:
        model = LateFusionClassifier(config.fusion)
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError, SafetensorError) as exc:
        raise CheckpointError(f"{folder}: weights do not match the config: {exc}") from exc
    return LoadedCheckpoint(model.eval(), config, folder)


def is_checkpoint_dir(folder: Path) -> bool:
    """A folder holding both checkpoint files."""
    return (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / WEIGHTS_FILE).is_file()
