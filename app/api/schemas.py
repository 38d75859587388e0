"""Pydantic schemas of the classify, models and health APIs (the public contract; snapshot-tested)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.trust.calibration import Decision

SCORE_DOC = (
    "Confidence scores, higher = more trustworthy, plain values (not x100): msp, max_logit, energy, "
    "neg_entropy, doctor_alpha always; s_it, s_ii, trustvlm, trustvlm_star when the label set has image "
    "prototypes (null for an image whose predicted class has none)."
)


class ClassifyRequest(BaseModel):
    """JSON form of POST /v1/classify. Give ``labels`` (ad-hoc) or ``label_set`` (a registered id)."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(..., min_length=1, description="base64-encoded image files (JPEG, PNG, ...)")
    labels: list[str] | None = Field(None, description="candidate labels, e.g. ['espresso', 'a cat']")
    label_set: str | None = Field(None, description="id of a registered label set (instead of labels)")
    templates: list[str] | None = Field(None, description="prompt templates with a '{}' slot")
    top_k: int = Field(5, ge=1, le=100)


class LabelProbability(BaseModel):
    label: str
    index: int
    probability: float


class TrustInfo(BaseModel):
    """What the image-space check could use for this image."""

    image_space: str = Field(
        description="the image encoder the prototypes and this image's features come from: the model's own "
        "space, or for a label set that chose it, the independent one (e.g. 'lite0:efficientnet_lite:lite0')"
    )
    prototypes_for_prediction: bool
    classes_with_prototypes: int
    preprocess: str = Field(description="aspect policy the image was encoded with (crop | letterbox)")
    alpha: float | None = Field(None, description="TrustVLM α of the label set (0: plain MSP); null: ad hoc")
    selection_evidence: str | None = Field(
        None,
        description="how policy, image space and α were chosen: support-loo | calibration | fixed; "
        "null: ad hoc",
    )
    note: str | None = None


class PredictionSet(BaseModel):
    """Split-conformal prediction set of a calibrated label set (app/trust/conformal.py)."""

    labels: list[str] = Field(description="the labels in the set, most probable first")
    indices: list[int]
    epsilon: float = Field(description="target miscoverage ε")
    method: Literal["lac", "aps"]
    probabilities: str = Field(description="trustvlm_star (q / (1 + α)) or softmax")
    guarantee: str


class ImageResult(BaseModel):
    index: int = Field(description="position of the image in the request")
    prediction: LabelProbability
    top_k: list[LabelProbability]
    refined_prediction: LabelProbability | None = Field(
        None, description="TrustVLM* prediction (text + image-space evidence), when prototypes exist"
    )
    scores: dict[str, float | None] = Field(description=SCORE_DOC)
    confidence: float | None = Field(description="value of the configured trust score (decision.score)")
    decision: Decision
    prediction_set: PredictionSet | None = Field(
        None, description="conformal set of plausible labels; null unless the label set is calibrated"
    )
    trust: TrustInfo


class LabelSetRef(BaseModel):
    id: str
    version: int


class ClassifyResponse(BaseModel):
    model: str
    label_set: LabelSetRef | None = None
    results: list[ImageResult]
    timing_ms: dict[str, float]


class TowerRuntime(BaseModel):
    """Where one model tower runs and the evidence that chose it (``app.runtime.types.TowerReport``)."""

    model_config = ConfigDict(extra="forbid")
    runtime: Literal["torch", "onnxruntime", "openvino"]
    precision: Literal["fp32", "bf16", "int8"]
    device: str
    dtype: str = Field(description="what the arithmetic runs in (int8: quantized weights and activations)")
    cache: Literal["hit", "built", "none"] = Field(description="export cache: hit, built now, none (torch)")
    load_seconds: float
    checks: dict[str, dict[str, float | bool | str]] = Field(
        description="parity (vs torch fp32) and speed measurements per runtime tried"
    )


class BatchingInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batch_size: int
    max_wait_ms: float
    max_queue_size: int
    queue_depth: int
    batches: int
    items: int
    mean_batch_size: float


class TextCacheInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int
    hits: int
    misses: int


class ModelInfo(BaseModel):
    """The loaded model: what it is, where each tower runs, batching and text-cache statistics."""

    model_config = ConfigDict(extra="forbid")
    id: str
    backend: str
    description: str
    device: str
    dtype: str
    runtime: dict[str, TowerRuntime] = Field(description="per tower (image, text, aux-image)")
    embedding_dim: int
    logit_scale: float
    aux_encoder: str = Field(description="the image space TrustVLM's prototypes live in")
    preprocess: str = Field(
        description="the preset's aspect policy (crop | letterbox); label sets may differ"
    )
    templates: list[str]
    ready: bool
    load_seconds: float
    batching: BatchingInfo
    text_cache: TextCacheInfo


class PresetInfo(BaseModel):
    name: str
    backend: str
    description: str
    offline: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    presets: list[PresetInfo]


class HealthResponse(BaseModel):
    status: Literal["ok", "starting", "unavailable"]
    detail: str | None = None
