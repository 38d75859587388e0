"""The multimodal feature-file dataset format: what users with pre-extracted features bring.

Layout of a dataset folder::

    dataset.json          {"format": "trustserve-multimodal/1", "name": ..., "class_names": [...],
                           "modalities": {"<name>": {"shape": [...], "preprocessing": {...}?}, ...}}
    <split>.npz           one float array per modality, shape (N, *shape), and "labels" (N,) int in [0, C)
                          (+ optional "meta_*" arrays, ignored by training, e.g. corruption kinds)

Splits are ``train``, ``val``, ``test`` (and any other name, e.g. ``test_corrupted``). Arrays load with
``allow_pickle=False``; every array is checked for shape, dtype, NaN/inf and label range on load.
Example (SlowFast video + SlowOnly flow + VGGSound audio, as in ACR)::

    np.savez("train.npz", video=v (N, 2304), flow=f (N, 2048), audio=a (N, 512), labels=y (N,))
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.multimodal.specs import Preprocessing

FORMAT = "trustserve-multimodal/1"
META_PREFIX = "meta_"


class DatasetFormatError(ValueError):
    """The dataset folder does not follow the documented format."""


class ModalityInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: list[int] = Field(min_length=1)
    preprocessing: Preprocessing | None = None


class DatasetInfo(BaseModel):
    """The ``dataset.json`` manifest."""

    model_config = ConfigDict(extra="allow")
    format: str = FORMAT
    name: str
    class_names: list[str] = Field(min_length=2)
    modalities: dict[str, ModalityInfo] = Field(min_length=2)


@dataclass
class MultimodalSplit:
    """One split in memory: float32 arrays per modality (N, *shape), int64 labels (N,), metadata arrays."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> MultimodalSplit:
        return MultimodalSplit(
            {k: v[index] for k, v in self.inputs.items()},
            self.labels[index],
            {k: v[index] for k, v in self.meta.items()},
        )


def read_info(root: Path) -> DatasetInfo:
    """Parse and validate ``dataset.json``."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DatasetFormatError(f"{root}: no dataset.json (see app/multimodal/feature_dataset.py)")
    try:
        info = DatasetInfo.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise DatasetFormatError(f"{path}: invalid manifest: {exc}") from exc
    if info.format != FORMAT:
        raise DatasetFormatError(f"{path}: unsupported format {info.format!r}, expected {FORMAT!r}")
    return info


def validate_split(split: MultimodalSplit, info: DatasetInfo, where: str) -> None:
    """Raise ``DatasetFormatError`` naming the first problem: modalities, shapes, dtypes, NaN, labels."""
    expected, got = set(info.modalities), set(split.inputs)
    if expected != got:
        raise DatasetFormatError(
            f"{where}: modalities {sorted(got)} do not match dataset.json {sorted(expected)} "
            f"(missing {sorted(expected - got)}, unexpected {sorted(got - expected)})"
        )
    labels = split.labels
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(
            f"{where}: 'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    n = labels.shape[0]
    if n == 0:
        raise DatasetFormatError(f"{where}: the split is empty")
    num_classes = len(info.class_names)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetFormatError(
            f"{where}: labels must lie in [0, {num_classes - 1}] ({num_classes} class names), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    for name, array in split.inputs.items():
        shape = (n, *info.modalities[name].shape)
        if not np.issubdtype(array.dtype, np.floating):
            raise DatasetFormatError(f"{where}: modality {name!r} must be a float array, got {array.dtype}")
        if array.shape != shape:
            raise DatasetFormatError(f"{where}: modality {name!r} has shape {array.shape}, expected {shape}")
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array.reshape(n, -1))).any(axis=1).sum())
            raise DatasetFormatError(f"{where}: modality {name!r} has NaN/inf values in {bad} samples")


def load_split(root: Path, split: str, info: DatasetInfo | None = None) -> MultimodalSplit:
    """Load and validate ``<root>/<split>.npz`` (no pickles)."""
    root = Path(root)
    info = info or read_info(root)
    path = root / f"{split}.npz"
    if not path.is_file():
        present = sorted(p.stem for p in root.glob("*.npz"))
        raise DatasetFormatError(f"{root}: no split {split!r} ({path.name}); present: {present}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            data = {key: arrays[key] for key in arrays.files}
    except ValueError as exc:
        raise DatasetFormatError(f"{path}: cannot read arrays without unpickling ({exc})") from exc
    if "labels" not in data:
        raise DatasetFormatError(f"{path}: missing the 'labels' array")
    labels = data.pop("labels")
    meta = {k: v for k, v in data.items() if k.startswith(META_PREFIX)}
    inputs = {k: v for k, v in data.items() if not k.startswith(META_PREFIX)}
    result = MultimodalSplit(inputs, labels.astype(np.int64) if labels.dtype.kind in "iu" else labels, meta)
    validate_split(result, info, str(path))
    result.inputs = {k: v.astype(np.float32, copy=False) for k, v in result.inputs.items()}
    return result


def save_split(root: Path, split: str, data: MultimodalSplit) -> Path:
    """Write ``<root>/<split>.npz`` (uncompressed)."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", split):
        raise ValueError(f"invalid split name {split!r}")
    path = Path(root) / f"{split}.npz"
    arrays: dict[str, np.ndarray] = {"labels": data.labels, **data.inputs, **data.meta}
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its flags
    return path


def write_info(root: Path, info: DatasetInfo | dict[str, Any]) -> Path:
    """Write ``dataset.json``."""
    info = info if isinstance(info, DatasetInfo) else DatasetInfo.model_validate(info)
    path = Path(root) / "dataset.json"
    path.write_text(json.dumps(info.model_dump(mode="json", exclude_none=True), indent=2) + "\n")
    return path
