"""From a dataset folder to a servable checkpoint: default architecture per modality, training,
validation metrics, reject-threshold calibration on the validation split, and saving."""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.multimodal.checkpoint import CalibrationInfo, CheckpointConfig, save_checkpoint
from app.multimodal.evaluate import Report, evaluate_model
from app.multimodal.feature_dataset import DatasetInfo, load_split, read_info
from app.multimodal.objective import LossConfig
from app.multimodal.specs import (
    FusionSpec,
    ImagePreprocessing,
    LogMelPreprocessing,
    ModalitySpec,
    PretrainedImagePreprocessing,
    SpeechEmbeddingPreprocessing,
)
from app.multimodal.synthesis import effective_n_range
from app.multimodal.train import TrainConfig, TrainResult, predict_logits, train_model
from app.trust.calibration import DEFAULT_DELTA, CalibrationError, calibrate_target_risk
from app.trust.scores import BASELINE_SCORES

log = logging.getLogger(__name__)


@dataclass
class ArchitectureOptions:
    """Encoder choices for ``default_fusion_spec``."""

    embed_dim: int = 64
    image_channels: tuple[int, ...] = (32, 64)
    spectrogram_channels: tuple[int, ...] = (8, 16, 32)
    feature_hidden_dims: tuple[int, ...] = ()
    feature_embed_dim: int | None = None  # None: identity on pre-extracted features
    feature_input_norm: bool = False  # LayerNorm on pre-extracted features before the adapter
    dropout: float = 0.5


def _feature_spec(
    name: str,
    shape: list[int],
    options: ArchitectureOptions,
    prep: PretrainedImagePreprocessing | SpeechEmbeddingPreprocessing | None,
) -> ModalitySpec:
    """A ``features`` encoder (identity or adapter) on a 1-D feature vector; ``prep`` says how files
    become such vectors at serving time (a frozen pretrained extractor), None: vectors only."""
    identity = not options.feature_hidden_dims and options.feature_embed_dim is None
    embed = shape[0] if identity else (options.feature_embed_dim or options.embed_dim)
    return ModalitySpec(
        name=name,
        encoder="features",
        input_shape=shape,
        embed_dim=embed,
        encoder_args={
            "hidden_dims": list(options.feature_hidden_dims),
            **({"input_norm": True} if options.feature_input_norm else {}),
        },
        **({"preprocessing": prep} if prep is not None else {}),
    )


def default_fusion_spec(info: DatasetInfo, options: ArchitectureOptions, outlier_class: bool) -> FusionSpec:
    """One encoder per modality chosen by its preprocessing: image → ``image_cnn``, log-mel →
    ``spectrogram_cnn``, feature vectors → ``features`` (identity, or an MLP when hidden dims are given)."""
    modalities = []
    for name, modality in info.modalities.items():
        prep = modality.preprocessing
        if isinstance(prep, ImagePreprocessing):
            spec = ModalitySpec(
                name=name,
                encoder="image_cnn",
                input_shape=modality.shape,
                embed_dim=options.embed_dim,
                encoder_args={"channels": list(options.image_channels)},
                preprocessing=prep,
            )
        elif isinstance(prep, LogMelPreprocessing):
            spec = ModalitySpec(
                name=name,
                encoder="spectrogram_cnn",
                input_shape=modality.shape,
                embed_dim=options.embed_dim,
                encoder_args={"channels": list(options.spectrogram_channels)},
                preprocessing=prep,
            )
        elif isinstance(prep, PretrainedImagePreprocessing | SpeechEmbeddingPreprocessing):
            spec = _feature_spec(name, modality.shape, options, prep)
        else:
            if len(modality.shape) != 1:
                raise ValueError(
                    f"modality {name!r}: feature vectors must be 1-D, got shape {modality.shape}"
                )
            spec = _feature_spec(name, modality.shape, options, None)
        modalities.append(spec)
    return FusionSpec(
        modalities=modalities,
        num_classes=len(info.class_names),
        dropout=options.dropout,
        outlier_class=outlier_class,
    )


def calibrate(
    val_logits: np.ndarray, labels: np.ndarray, score: str, target_risk: float, delta: float
) -> CalibrationInfo:
    """SGR threshold on the validation split for ``score``; an uncalibrated record (with the reason) when
    the target risk cannot be certified — never a silently chosen threshold."""
    if score not in BASELINE_SCORES:
        raise ValueError(f"unknown confidence score {score!r}; known: {sorted(BASELINE_SCORES)}")
    conf = BASELINE_SCORES[score](val_logits, 1.0)
    correct = (val_logits.argmax(axis=1) == labels).astype(np.int64)
    try:
        result = calibrate_target_risk(conf, correct, target_risk, delta)
    except CalibrationError as exc:
        log.warning("calibration failed: %s", exc)
        return CalibrationInfo(score=score, target=target_risk, delta=delta, note=str(exc))
    fields = {
        "threshold",
        "rule",
        "target",
        "delta",
        "guarantee",
        "coverage",
        "risk",
        "risk_upper_bound",
        "n",
    }
    return CalibrationInfo(
        score=score, note="calibrated on the validation split", **result.model_dump(include=fields)
    )


def mfs_ranges(spec: FusionSpec, loss: LossConfig) -> dict[str, dict[str, int]]:
    """The MFS blocks actually drawn for every modality pair "a+b" (n_min..n_max_drawn, after rescaling
    and clipping to the narrower embedding) and λ's denominator (λ = n / lambda_n_max), recorded in the
    checkpoint so that a rescaled or clipped range is never implicit."""
    dims = {m.name: m.embed_dim for m in spec.modalities}
    names = list(dims)
    ranges = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n_min, n_max = loss.mfs_n_range(dims[a], dims[b])
            lo, hi = effective_n_range(dims[a], dims[b], n_min, n_max)
            ranges[f"{a}+{b}"] = {"n_min": lo, "n_max_drawn": hi, "lambda_n_max": n_max}
    return ranges


@dataclass
class TrainedCheckpoint:
    config: CheckpointConfig
    result: TrainResult
    path: Path


def train_checkpoint(
    dataset_dir: Path,
    out_dir: Path,
    *,
    name: str,
    loss: LossConfig,
    train_config: TrainConfig,
    architecture: ArchitectureOptions | None = None,
    score: str = "msp",
    target_risk: float = 0.05,
    delta: float = DEFAULT_DELTA,
    work_dir: Path | None = None,
    resume: bool = True,
    progress: bool = True,
    description: str = "",
) -> TrainedCheckpoint:
    """Train on ``train``, select on ``val``, calibrate on ``val``, write ``out_dir`` (config + weights).

    Training state and curves go to ``work_dir`` (default ``runs/train/<name>``), never into the
    checkpoint folder, so the checkpoint holds exactly two small files.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    info = read_info(dataset_dir)
    train, val = load_split(dataset_dir, "train", info), load_split(dataset_dir, "val", info)
    spec = default_fusion_spec(
        info, architecture or ArchitectureOptions(), outlier_class=loss.needs_outlier_class
    )
    work = Path(work_dir) if work_dir else Path("runs") / "train" / name
    result = train_model(
        spec, loss, train, val, train_config, work, resume=resume, progress=progress, title=name
    )
    val_logits = predict_logits(result.model, val)
    val_reports: dict[str, Report] = evaluate_model(result.model, val)
    calibration = calibrate(val_logits, val.labels, score, target_risk, delta)
    recipe: dict[str, Any] = {
        "dataset": {"name": info.name, "path": str(dataset_dir), "train": len(train), "val": len(val)},
        "loss": loss.model_dump(),
        **({"mfs_n_range": mfs_ranges(result.model.spec, loss)} if loss.mfs else {}),
        "optimizer": {"name": "adam", **train_config.model_dump()},
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "selection": "best validation accuracy of the fused head (the later epoch on ties)",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    config = CheckpointConfig(
        name=name,
        description=description,
        fusion=result.model.spec,
        class_names=info.class_names,
        training=recipe,
        validation_metrics={"split": "val", "scores": val_reports},
        calibration=calibration,
    )
    save_checkpoint(out_dir, result.model, config)
    return TrainedCheckpoint(config, result, out_dir)
