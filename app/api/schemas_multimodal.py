"""Pydantic schemas of the multimodal (ACR) API; the answer mirrors POST /v1/classify's per-image result."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from app.api.schemas import Decision


class MultimodalPredictRequest(BaseModel):
    """JSON form of POST /v1/multimodal/{model}/predict: one feature vector per modality."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, list[StrictFloat | StrictInt]] = Field(
        ...,
        min_length=1,
        description="modality name → flat list of numbers (a pre-extracted feature vector, or the "
        "preprocessed input flattened to the modality's input_shape)",
        examples=[{"video": [0.1, 0.2], "audio": [0.3]}],
    )
    top_k: int = Field(5, ge=1, le=1000)


class ClassProbability(BaseModel):
    label: str
    index: int
    probability: float


class MultimodalPrediction(BaseModel):
    model: str
    prediction: ClassProbability
    top_k: list[ClassProbability]
    scores: dict[str, float] = Field(
        description="confidence scores on the fused head's class logits (outlier class dropped), higher = "
        "more trustworthy, plain values: msp, max_logit, energy, neg_entropy, doctor_alpha, softmax_variance"
    )
    confidence: float = Field(
        description="value of the score the checkpoint's threshold applies to (decision.score)"
    )
    decision: Decision
    timing_ms: dict[str, float]


class ModalityInfo(BaseModel):
    name: str
    input: str = Field(description="vector | image | log_mel: what the preprocessing expects")
    input_shape: list[int]
    accepts: list[str] = Field(description="request forms accepted for this modality")
    preprocessing: dict[str, Any]


class MultimodalModelInfo(BaseModel):
    name: str
    description: str
    class_names: list[str]
    modalities: list[ModalityInfo]
    outlier_class: bool
    calibration: dict[str, Any]
    validation: dict[str, Any] = Field(description="validation-split metrics of the checkpoint's score")
    training: dict[str, Any]


class MultimodalModelsResponse(BaseModel):
    models: list[MultimodalModelInfo]
