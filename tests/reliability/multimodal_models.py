"""Two tiny random-weight multimodal (ACR) checkpoints for the reliability suite: ``rel-vectors`` (two
feature-vector modalities) and ``rel-media`` (an image and a log-mel audio modality), so the corpus reaches
both JSON vectors and file decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from app.multimodal.checkpoint import CalibrationInfo, CheckpointConfig, save_checkpoint
from app.multimodal.model import LateFusionClassifier
from app.multimodal.specs import FusionSpec, ModalitySpec
from tests.multimodal.mm_helpers import image_audio_spec

VECTORS, MEDIA = "rel-vectors", "rel-media"
VECTOR_SHAPES = {"video": 12, "audio": 6}


def _save(folder: Path, spec: FusionSpec, name: str) -> None:
    torch.manual_seed(0)
    calibration = CalibrationInfo(score="msp", threshold=0.5, rule="target_risk", guarantee="test guarantee")
    config = CheckpointConfig(name=name, fusion=spec, class_names=["a", "b", "c"], calibration=calibration)
    save_checkpoint(folder, LateFusionClassifier(spec).eval(), config)


def write_multimodal_dir(root: Path) -> Path:
    """``root/<name>/`` checkpoint folders for both models; returns ``root``."""
    vectors = FusionSpec(
        modalities=[
            ModalitySpec(name=n, encoder="features", input_shape=[d], embed_dim=6)
            for n, d in VECTOR_SHAPES.items()
        ],
        num_classes=3,
        dropout=0.0,
        outlier_class=True,
    )
    media = image_audio_spec()  # the multimodal tests' tiny image + log-mel model
    _save(root / VECTORS, vectors, VECTORS)
    _save(root / MEDIA, media, MEDIA)
    return root


def wav_bytes(seconds: float = 0.3, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def good_vectors() -> dict[str, list[float]]:
    return {name: [0.1] * dim for name, dim in VECTOR_SHAPES.items()}
