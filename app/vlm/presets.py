"""Model presets: one YAML file per servable model in the model repository (``models/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.trust.scores import DEFAULT_ALPHA, DEFAULT_VISUAL_TEMPERATURE, TrustScoreName

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


class AuxEncoderSpec(BaseModel):
    """Which image space TrustVLM uses. ``kind: vlm`` reuses the backend's own forward pass."""

    model_config = ConfigDict(extra="forbid")
    kind: str = "vlm"
    args: dict[str, Any] = Field(default_factory=dict)


class TrustSpec(BaseModel):
    """TrustVLM defaults for a preset (the reference's unless the preset says otherwise)."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = DEFAULT_ALPHA
    visual_temperature: float = DEFAULT_VISUAL_TEMPERATURE
    score: TrustScoreName = "trustvlm"


class ModelPreset(BaseModel):
    """A servable VLM: backend + weights + prompts + image space."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    backend: str
    args: dict[str, Any] = Field(default_factory=dict)
    logit_scale: float | None = None  # overrides the checkpoint's (fitted for the offline model)
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])
    aux_encoder: AuxEncoderSpec = Field(default_factory=AuxEncoderSpec)
    trust: TrustSpec = Field(default_factory=TrustSpec)
    offline: bool = False  # true when it loads without any download
    # where this model runs, unless TRUSTSERVE_RUNTIME / TRUSTSERVE_PRECISION are set explicitly
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] | None = None
    precision: Literal["fp32", "bf16", "int8"] | None = None

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one prompt template is required")
        for t in v:
            if "{}" not in t:
                raise ValueError(f"prompt template {t!r} has no '{{}}' slot for the label")
        return v


def load_preset_file(path: Path) -> ModelPreset:
    """Parse and validate one preset YAML."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset must be a YAML mapping")
    data.setdefault("name", path.stem)
    return ModelPreset.model_validate(data)


def list_presets(models_dir: Path = DEFAULT_MODELS_DIR) -> dict[str, ModelPreset]:
    """All VLM presets in a model repository (files ``*.yaml`` with a ``backend`` key)."""
    presets: dict[str, ModelPreset] = {}
    for path in sorted(models_dir.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and "backend" in raw:
            preset = load_preset_file(path)
            presets[preset.name] = preset
    return presets


def get_preset(name: str, models_dir: Path = DEFAULT_MODELS_DIR) -> ModelPreset:
    """A preset by name, or a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in {".yaml", ".yml"} and candidate.exists():
        return load_preset_file(candidate)
    presets = list_presets(models_dir)
    if name not in presets:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(presets)}")
    return presets[name]
