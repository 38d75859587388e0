"""Dataset loaders: formats, splits, inversion, subsampling, support draws (no model involved)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.trust.datasets import (
    FASHION_MNIST_DIR,
    DatasetError,
    LazyImages,
    balanced_subsample,
    default_invert,
    load_dataset,
    load_numpy_pickle_gz,
    load_support,
    read_idx_gz,
)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_gz_round_trip_and_rejects_bad_files(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx_gz(tmp_path / "ok.gz", images)
    assert np.array_equal(read_idx_gz(tmp_path / "ok.gz"), images)
    with gzip.open(tmp_path / "magic.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")  # float IDX, not uint8
    with pytest.raises(DatasetError, match="unsigned-byte"):
        read_idx_gz(tmp_path / "magic.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + np.asarray([5], dtype=">u4").tobytes() + b"\x01\x02")
    with pytest.raises(DatasetError, match="bytes of data"):
        read_idx_gz(tmp_path / "short.gz")


class RunsACommand:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_numpy_only_unpickler_reads_arrays_and_refuses_code(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    with gzip.open(tmp_path / "array.gz", "wb") as f:
        pickle.dump(array, f)
    assert np.array_equal(load_numpy_pickle_gz(tmp_path / "array.gz"), array)
    with gzip.open(tmp_path / "evil.gz", "wb") as f:
        pickle.dump(RunsACommand(), f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle_gz(tmp_path / "evil.gz")
    with gzip.open(tmp_path / "list.gz", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(DatasetError, match="numpy array"):
        load_numpy_pickle_gz(tmp_path / "list.gz")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/<class>/*.png, 5 images per class, gray level = 10 * class + image number."""
    for c, name in enumerate(["golden_retriever", "tabby_cat", "zebra"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("L", (6, 4), 10 * c + i).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_imagefolder_classes_splits_and_inversion(image_folder: Path) -> None:
    name = f"imagefolder:{image_folder}"
    every = load_dataset(name, "all")
    assert every.class_names == ["golden retriever", "tabby cat", "zebra"]
    assert np.array_equal(np.bincount(every.labels), [5, 5, 5])
    assert every.images[7].mode == "RGB" and every.images[7].getpixel((0, 0)) == (12, 12, 12)
    assert every.metadata["inverted"] is False and default_invert(name) is False
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert isinstance(train.images, LazyImages) and isinstance(test.images, LazyImages)
    assert set(train.images.indices).isdisjoint(test.images.indices)
    assert len(train) + len(test) == len(every)
    inverted = load_dataset(name, "all", invert=True)
    assert inverted.images[7].getpixel((0, 0)) == (243, 243, 243) and inverted.metadata["inverted"] is True


def test_imagefolder_uses_split_subfolders_when_present(image_folder: Path, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("split-root")
    (root / "train").symlink_to(image_folder, target_is_directory=True)
    (root / "test").mkdir()
    (root / "test" / "zebra").mkdir()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(root / "test" / "zebra" / "z.png")
    test = load_dataset(f"imagefolder:{root}", "test")
    assert test.class_names == ["zebra"] and len(test) == 1 and test.metadata["split_kind"] == "folders"
    assert len(load_dataset(f"imagefolder:{root}", "train")) == 15


def test_digits_default_inversion_is_explicit_and_switchable() -> None:
    inverted, raw = load_dataset("digits", "test"), load_dataset("digits", "test", invert=False)
    assert inverted.metadata["inverted"] is True and inverted.metadata["invert_default"] is True
    assert raw.metadata["inverted"] is False
    assert raw.images[0].getpixel((0, 0)) == (0, 0, 0)  # white-on-black digits have a black border
    assert inverted.images[0].getpixel((0, 0)) == (255, 255, 255)
    assert inverted.class_names[:3] == ["zero", "one", "two"]


def test_limit_is_class_balanced_and_seeded() -> None:
    a = load_dataset("digits", "test", limit=20, seed=3)
    assert len(a) == 20 and np.array_equal(np.bincount(a.labels), [2] * 10)
    b = load_dataset("digits", "test", limit=20, seed=3)
    c = load_dataset("digits", "test", limit=20, seed=4)
    assert np.array_equal(a.images.indices, b.images.indices)
    assert not np.array_equal(a.images.indices, c.images.indices)
    assert a.metadata["limit"] == 20


def test_balanced_subsample_with_unequal_classes() -> None:
    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    picked = balanced_subsample(labels, 7, seed=0)
    assert np.array_equal(np.bincount(labels[picked], minlength=3), [3, 2, 2]) or np.array_equal(
        np.bincount(labels[picked], minlength=3), [2, 2, 3]
    )


def test_animal_mnist_split_is_disjoint_stratified_and_large_enough() -> None:
    train, test = load_dataset("animal-mnist", "train"), load_dataset("animal-mnist", "test")
    assert (len(train), len(test)) == (7000, 3000)
    assert np.array_equal(np.bincount(test.labels), [300] * 10)
    assert set(train.images.indices).isdisjoint(test.images.indices)
    assert test.class_names == [
        "bear",
        "bird",
        "cat",
        "cow",
        "dog",
        "elephant",
        "giraffe",
        "horse",
        "sheep",
        "zebra",
    ]
    image = test.images[0]
    assert image.size == (28, 28) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # inverted by default: black silhouette on white


def test_support_draw_comes_from_train_only() -> None:
    support = load_support("animal-mnist", 16, seed=0)
    test = load_dataset("animal-mnist", "test")
    assert np.array_equal(np.bincount(support.labels), [16] * 10)
    assert set(support.images.indices).isdisjoint(test.images.indices)
    assert support.metadata["split"] == "train" and support.metadata["shots"] == 16
    again = load_support("animal-mnist", 16, seed=0)
    assert np.array_equal(support.images.indices, again.images.indices)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_official_splits() -> None:
    test = load_dataset("fashion-mnist", "test")
    assert len(test) == 10_000 and np.array_equal(np.bincount(test.labels), [1000] * 10)
    assert test.class_names[0] == "t-shirt" and test.metadata["split_kind"] == "official"
    assert test.images[0].size == (28, 28) and test.images[0].mode == "RGB"


def test_conformal_clip_data_classes() -> None:
    pytest.importorskip("conformal_clip_data")
    test = load_dataset("conformal-clip-data", "test")
    assert len(test) == 600 and len(test.class_names) == 3
    assert "defect-free fabric" in test.class_names and test.metadata["inverted"] is False


def test_bad_requests_raise_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mnist", "test")
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("digits", "validation")
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("digits", "test", limit=0)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}", "all")
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path}", "all")
    for name, count in [("cat", 1), ("dog", 4)]:
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (2, 2)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(DatasetError, match="stratified"):
        load_dataset(f"imagefolder:{tmp_path}", "test")
    assert len(load_dataset(f"imagefolder:{tmp_path}", "all")) == 5


def test_rgb_image_files_are_read_before_they_close(tmp_path: Path) -> None:
    """An RGB JPEG is returned as is by the alpha compositing; it must be decoded while its file is open
    (conformal-clip-data failed with PIL's ``assert self.fp is not None`` when first converted)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("a", "b"):
        for i in range(3):
            Image.new("RGB", (8, 5), (200, 10 * i, 0)).save(tmp_path / name / f"{i}.jpg")
    image = load_dataset(f"imagefolder:{tmp_path}", "all").images[4]
    assert image.convert("L").size == (8, 5) and image.mode == "RGB"
