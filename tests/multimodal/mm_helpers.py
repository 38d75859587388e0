"""Helpers for the multimodal tests: tiny datasets, random-weight checkpoints, image/WAV bytes."""

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from app.multimodal.checkpoint import CalibrationInfo, CheckpointConfig, save_checkpoint
from app.multimodal.feature_dataset import MultimodalSplit, save_split, write_info
from app.multimodal.model import LateFusionClassifier
from app.multimodal.specs import (
    FusionSpec,
    ImagePreprocessing,
    LogMelPreprocessing,
    ModalitySpec,
    PretrainedImagePreprocessing,
    SpeechEmbeddingPreprocessing,
)

TINY_AUDIO = LogMelPreprocessing(n_fft=256, hop_length=128, n_mels=8, duration_s=0.25, f_max=4000.0)


def tiny_feature_spec() -> FusionSpec:
    return FusionSpec(
        modalities=[
            ModalitySpec(name="video", encoder="features", input_shape=[12], embed_dim=8, encoder_args={}),
            ModalitySpec(name="audio", encoder="features", input_shape=[6], embed_dim=6),
        ],
        num_classes=3,
        dropout=0.0,
        outlier_class=True,
    )


def make_feature_dataset(root: Path, n_per_class: int = 12, seed: int = 0) -> Path:
    """Three Gaussian classes, two modalities ("video" 6-d, "audio" 4-d), splits train/val/test."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    centres_v, centres_a = rng.normal(0, 2, (3, 6)), rng.normal(0, 2, (3, 4))
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(3), n_per_class)
        video = (centres_v[labels] + rng.normal(0, 1.0, (labels.size, 6))).astype(np.float32)
        audio = (centres_a[labels] + rng.normal(0, 1.0, (labels.size, 4))).astype(np.float32)
        save_split(root, split, MultimodalSplit({"video": video, "audio": audio}, labels))
    modalities = {"video": {"shape": [6]}, "audio": {"shape": [4]}}
    write_info(root, {"name": "tiny", "class_names": ["a", "b", "c"], "modalities": modalities})
    return root


def image_audio_spec() -> FusionSpec:
    image = ModalitySpec(
        name="image",
        encoder="image_cnn",
        input_shape=[1, 8, 8],
        embed_dim=8,
        encoder_args={"channels": [4]},
        preprocessing=ImagePreprocessing(height=8, width=8),
    )
    audio = ModalitySpec(
        name="audio",
        encoder="spectrogram_cnn",
        input_shape=[8, TINY_AUDIO.num_frames],
        embed_dim=8,
        encoder_args={"channels": [4]},
        preprocessing=TINY_AUDIO,
    )
    return FusionSpec(modalities=[image, audio], num_classes=3, outlier_class=True)


def save_random_checkpoint(folder: Path, spec: FusionSpec, name: str, threshold: float | None = 0.5) -> Path:
    """A random-weight checkpoint (serving tests check plumbing and validation, not accuracy)."""
    torch.manual_seed(0)
    calibration = CalibrationInfo(
        score="msp",
        threshold=threshold,
        rule="target_risk" if threshold is not None else None,
        guarantee="test guarantee" if threshold is not None else None,
    )
    config = CheckpointConfig(name=name, fusion=spec, class_names=["a", "b", "c"], calibration=calibration)
    return save_checkpoint(folder, LateFusionClassifier(spec).eval(), config)


def png_bytes(size: int = 16, value: int = 200) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(seconds: float = 0.3, rate: int = 8000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


TINY_PRETRAINED_IMAGE = PretrainedImagePreprocessing(
    image=ImagePreprocessing(height=8, width=8), extractor="lite0", input_size=32
)
TINY_SPEECH = SpeechEmbeddingPreprocessing(duration_s=0.8)  # one 0.76 s window: 96 features


def pretrained_feature_spec() -> FusionSpec:
    """Image and audio through the frozen pretrained extractors, tiny adapters on their features."""
    image = ModalitySpec(
        name="image",
        encoder="features",
        input_shape=[1280],
        embed_dim=8,
        encoder_args={"hidden_dims": [], "input_norm": True},
        preprocessing=TINY_PRETRAINED_IMAGE,
    )
    audio = ModalitySpec(
        name="audio",
        encoder="features",
        input_shape=[96],
        embed_dim=8,
        encoder_args={"hidden_dims": [], "input_norm": True},
        preprocessing=TINY_SPEECH,
    )
    return FusionSpec(modalities=[image, audio], num_classes=3, outlier_class=True)
