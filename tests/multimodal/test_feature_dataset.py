"""The feature-file dataset format: round trip and every validation error."""

from pathlib import Path

import numpy as np
import pytest

from app.multimodal.feature_dataset import (
    DatasetFormatError,
    MultimodalSplit,
    load_split,
    read_info,
    save_split,
    write_info,
)


def test_round_trip(feature_dataset: Path) -> None:
    info = read_info(feature_dataset)
    assert info.class_names == ["a", "b", "c"] and set(info.modalities) == {"video", "audio"}
    split = load_split(feature_dataset, "train", info)
    assert len(split) == 36 and split.inputs["video"].shape == (36, 6)
    assert split.inputs["audio"].dtype == np.float32 and split.labels.dtype == np.int64
    assert len(split.subset(np.array([0, 5]))) == 2


def _write(root: Path, **arrays: np.ndarray) -> None:
    labels = arrays.pop("labels", np.array([0, 1, 2]))
    np.savez(root / "bad.npz", labels=labels, **arrays)


GOOD = {"video": np.zeros((3, 6), np.float32), "audio": np.zeros((3, 4), np.float32)}


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"video": GOOD["video"]}, "missing ['audio']"),
        ({**GOOD, "extra": np.zeros((3, 2), np.float32)}, "unexpected ['extra']"),
        ({**GOOD, "video": np.zeros((3, 5), np.float32)}, "has shape (3, 5), expected (3, 6)"),
        ({**GOOD, "video": np.zeros((3, 6), np.int32)}, "must be a float array"),
        ({**GOOD, "audio": np.array([[0, 0, np.nan, 0]] * 3, np.float32)}, "NaN/inf values in 3 samples"),
        ({**GOOD, "labels": np.array([0, 1, 3])}, "labels must lie in [0, 2]"),
        ({**GOOD, "labels": np.array([0.0, 1.0, 2.0])}, "1-D integer array"),
        ({**GOOD, "labels": np.array([0, 1])}, "has shape (3, 6), expected (2, 6)"),
    ],
)
def test_validation_errors(feature_dataset: Path, arrays: dict, fragment: str) -> None:
    _write(feature_dataset, **arrays)
    with pytest.raises(DatasetFormatError) as info:
        load_split(feature_dataset, "bad")
    assert fragment in str(info.value)


def test_object_arrays_are_never_unpickled(feature_dataset: Path) -> None:
    np.savez(
        feature_dataset / "bad.npz",
        labels=np.array([0]),
        video=np.array([{"x": 1}], dtype=object),
        audio=np.zeros((1, 4), np.float32),
    )
    with pytest.raises(DatasetFormatError, match="without unpickling"):
        load_split(feature_dataset, "bad")


def test_manifest_and_split_errors(tmp_path: Path, feature_dataset: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"no dataset\.json"):
        read_info(tmp_path)
    (tmp_path / "dataset.json").write_text('{"name": "x", "class_names": ["a"], "modalities": {}}')
    with pytest.raises(DatasetFormatError, match="invalid manifest"):
        read_info(tmp_path)
    with pytest.raises(DatasetFormatError, match="no split 'nope'"):
        load_split(feature_dataset, "nope")
    np.savez(feature_dataset / "bad.npz", **GOOD)
    with pytest.raises(DatasetFormatError, match="missing the 'labels' array"):
        load_split(feature_dataset, "bad")


def test_meta_arrays_are_kept_apart(tmp_path: Path) -> None:
    write_info(
        tmp_path,
        {"name": "m", "class_names": ["a", "b"], "modalities": {"x": {"shape": [2]}, "y": {"shape": [1]}}},
    )
    split = MultimodalSplit(
        {"x": np.zeros((2, 2), np.float32), "y": np.ones((2, 1), np.float32)},
        np.array([0, 1]),
        {"meta_kind": np.array([3, 4])},
    )
    save_split(tmp_path, "test", split)
    loaded = load_split(tmp_path, "test")
    assert set(loaded.inputs) == {"x", "y"} and loaded.meta["meta_kind"].tolist() == [3, 4]
    with pytest.raises(ValueError):
        save_split(tmp_path, "../evil", split)
