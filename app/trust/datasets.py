"""Labelled image sets that ship with package registries, for evaluation and support images.

``load_dataset(name, split)`` returns RGB PIL images (decoded lazily), integer labels and class names
worded as zero-shot labels. Names: ``fashion-mnist`` (Debian ``dataset-fashion-mnist``),
``animal-mnist`` (PyPI ``animal-mnist``), ``digits`` (scikit-learn), ``conformal-clip-data`` (PyPI) and
``imagefolder:<path>`` (one sub-folder per class, torchvision ``ImageFolder`` layout).

Splits: Fashion-MNIST has its official ``train``/``test``. The others have no official test split, so a
stratified split with the fixed seed ``SPLIT_SEED`` makes disjoint ``train``/``test`` parts (``test`` =
``TEST_FRACTION``); it never depends on the ``seed`` argument, which only drives ``limit`` subsampling.
``all`` is every image. Prototypes must come from ``train``, evaluation from ``test`` (TrustVLM protocol).

Inversion: MNIST-style images are white strokes on black; ImageNet-trained encoders see black-on-white
objects far more often, so these sets are *inverted by default* (``255 - x``). This is an explicit option,
never silent: ``invert=False`` turns it off and ``LabelledImages.metadata["inverted"]`` records what was
done. Photographs (``conformal-clip-data``, ``imagefolder``) are never inverted unless asked.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split

from app.errors import require_module
from app.trust.prototypes import draw_support_indices

SPLIT_SEED = 0
TEST_FRACTION = 0.3
SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Official class order, worded as zero-shot labels ("T-shirt/top" -> "t-shirt", "Trouser" -> "trousers").
FASHION_MNIST_CLASSES = [
    "t-shirt", "trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
ANIMAL_MNIST_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# conformal-clip-data folder -> label
TEXTILE_CLASSES = {
    "nominal": "defect-free fabric",
    "local": "fabric with a local defect",
    "global": "fabric with a global defect",
}


class DatasetError(ValueError):
    """Unknown dataset or split, missing files, or malformed data."""


@dataclass
class LabelledImages:
    """Images with integer labels. ``metadata`` records how they were produced (split, inversion, source)."""

    images: Sequence[Image.Image]
    labels: np.ndarray
    class_names: list[str]
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledImages:
        """The images at ``indices`` (lazy images stay lazy)."""
        idx = np.asarray(indices, dtype=np.int64)
        images = (
            self.images.take(idx) if isinstance(self.images, LazyImages) else [self.images[i] for i in idx]
        )
        return LabelledImages(
            images, self.labels[idx], list(self.class_names), self.name, dict(self.metadata)
        )


class LazyImages(Sequence[Image.Image]):
    """A read-only sequence that builds each RGB PIL image on access from a shared source."""

    def __init__(self, load: Callable[[int], Image.Image], indices: np.ndarray):
        self._load, self._indices = load, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    @property
    def indices(self) -> np.ndarray:
        """Positions of these images in the underlying source (e.g. the whole packaged array)."""
        return self._indices.copy()

    @overload
    def __getitem__(self, i: int) -> Image.Image: ...
    @overload
    def __getitem__(self, i: slice) -> LazyImages: ...
    def __getitem__(self, i: int | slice) -> Image.Image | LazyImages:
        if isinstance(i, slice):
            return LazyImages(self._load, self._indices[i])
        return self._load(int(self._indices[i]))

    def __iter__(self) -> Iterator[Image.Image]:
        return (self._load(int(j)) for j in self._indices)

    def take(self, positions: np.ndarray) -> LazyImages:
        """A lazy sub-sequence at the given positions."""
        return LazyImages(self._load, self._indices[np.asarray(positions, dtype=np.int64)])


def gray_array_images(pixels: np.ndarray, invert: bool) -> Callable[[int], Image.Image]:
    """Loader for an (N, H, W) uint8 gray array: image i as RGB PIL, optionally inverted (255 - x)."""

    def load(i: int) -> Image.Image:
        image = Image.fromarray(pixels[i])
        return (ImageOps.invert(image) if invert else image).convert("RGB")

    return load


def file_images(paths: Sequence[Path], invert: bool) -> Callable[[int], Image.Image]:
    """Loader for image files: file i as RGB PIL, optionally inverted."""

    def load(i: int) -> Image.Image:
        with Image.open(paths[i]) as image:
            rgb = image.convert("RGB")
        return ImageOps.invert(rgb) if invert else rgb

    return load


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format: magic 0x0000 08 ndim, big-endian dims, uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: {data.size} bytes of data for shape {tuple(dims)}")
    return data.reshape(tuple(dims))


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else.

    The animal-mnist wheel ships its arrays as gzipped pickles (no other format exists). A pickle can run
    arbitrary callables, so only the three globals a pickled ``ndarray`` needs are resolved; anything else
    raises ``pickle.UnpicklingError``.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            )
        from numpy._core import multiarray

        return multiarray._reconstruct if name == "_reconstruct" else getattr(np, name)


def load_numpy_pickle_gz(path: Path) -> np.ndarray:
    """A gzipped pickle holding one numpy array, read with ``NumpyOnlyUnpickler``."""
    with gzip.open(path, "rb") as f:
        array = NumpyOnlyUnpickler(f).load()
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path}: expected a numpy array, got {type(array).__name__}")
    return array


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of ``split`` in a fixed stratified train/test partition (seed ``SPLIT_SEED``)."""
    every = np.arange(len(labels))
    if split == "all":
        return every
    try:
        train, test = train_test_split(
            every, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
        )
    except ValueError as exc:  # e.g. a class with a single image cannot be stratified
        raise DatasetError(f"cannot make a stratified train/test split: {exc}") from exc
    return np.sort(train if split == "train" else test)


def balanced_subsample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``limit`` positions, classes as balanced as possible: shuffle each class, then deal round-robin."""
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = rng.permutation(len(members))
    order = np.lexsort((rng.random(len(labels)), rank))  # by rank within class, random tie-break
    return np.sort(order[:limit])


def load_support(name: str, shots: int, *, seed: int = 0, invert: bool | None = None) -> LabelledImages:
    """K support images per class from the ``train`` split (disjoint from ``test`` for every dataset).

    TrustVLM draws K = 16 support images per class with a fixed seed (Dong et al., 2025).
    """
    train = load_dataset(name, "train", invert=invert)
    support = train.subset(draw_support_indices(train.labels, shots, seed))
    support.metadata.update(shots=shots, support_seed=seed)
    return support


# --- one reader per source: (split, invert) -> (images, labels, class_names, metadata) -------------------

Source = tuple[LazyImages, np.ndarray, list[str], dict[str, Any]]


def _fashion_mnist(split: str, invert: bool) -> Source:
    prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    if not FASHION_MNIST_DIR.is_dir():
        raise DatasetError(f"{FASHION_MNIST_DIR} missing: install the Debian package dataset-fashion-mnist")
    pixels = [read_idx_gz(FASHION_MNIST_DIR / f"{p}-images-idx3-ubyte.gz") for p in prefixes]
    labels = [read_idx_gz(FASHION_MNIST_DIR / f"{p}-labels-idx1-ubyte.gz") for p in prefixes]
    x, y = np.concatenate(pixels), np.concatenate(labels).astype(np.int64)
    meta = {"source": str(FASHION_MNIST_DIR), "split_kind": "official"}
    return LazyImages(gray_array_images(x, invert), np.arange(len(y))), y, FASHION_MNIST_CLASSES, meta


def _animal_mnist(split: str, invert: bool) -> Source:
    require_dataset_packages("animal-mnist")
    folder = Path(str(resources.files("animal_mnist") / "data" / "Animal_MNIST"))
    x = load_numpy_pickle_gz(folder / "animal_data_version_3.gz")
    y = load_numpy_pickle_gz(folder / "animal_label_version_3.gz").astype(np.int64)
    if x.dtype != np.uint8 or x.ndim != 3 or len(x) != len(y):
        raise DatasetError(f"unexpected animal-mnist arrays {x.shape} {x.dtype} / {y.shape}")
    idx = split_indices(y, split)
    meta = {"source": str(folder), "split_kind": f"stratified seed={SPLIT_SEED} test={TEST_FRACTION}"}
    return LazyImages(gray_array_images(x, invert), idx), y[idx], ANIMAL_MNIST_CLASSES, meta


def _digits(split: str, invert: bool) -> Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    y = bunch.target.astype(np.int64)
    idx = split_indices(y, split)
    meta = {
        "source": "sklearn.datasets.load_digits",
        "split_kind": f"stratified seed={SPLIT_SEED} test={TEST_FRACTION}",
    }
    return LazyImages(gray_array_images(x, invert), idx), y[idx], DIGIT_CLASSES, meta


def _folder_classes(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files under ``root/<class>/`` (sorted), their class indices and the folder names."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for c, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [c] * len(files)
    if not paths:
        raise DatasetError(f"{root}: no images in class sub-folders")
    return paths, np.asarray(labels, dtype=np.int64), [f.name for f in folders]


def _conformal_clip_data(split: str, invert: bool) -> Source:
    [conformal_clip_data] = require_dataset_packages("conformal-clip-data")
    root = conformal_clip_data.textile_simulated_root()
    paths, y, folders = _folder_classes(root)
    idx = split_indices(y, split)
    meta = {
        "source": str(root),
        "split_kind": f"stratified seed={SPLIT_SEED} test={TEST_FRACTION}",
        "folders": folders,
    }
    return LazyImages(file_images(paths, invert), idx), y[idx], [TEXTILE_CLASSES[f] for f in folders], meta


def _imagefolder(root: Path, split: str, invert: bool) -> Source:
    """``root/<split>/<class>/*`` when split folders exist, else ``root/<class>/*`` with a seeded split."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    if split != "all" and (root / split).is_dir():
        paths, y, folders = _folder_classes(root / split)
        idx, kind = np.arange(len(y)), "folders"
    else:
        paths, y, folders = _folder_classes(root)
        idx, kind = split_indices(y, split), f"stratified seed={SPLIT_SEED} test={TEST_FRACTION}"
    names = [f.replace("_", " ") for f in folders]
    return (
        LazyImages(file_images(paths, invert), idx),
        y[idx],
        names,
        {"source": str(root), "split_kind": kind},
    )


# name -> (reader, default inversion)
READERS: dict[str, tuple[Callable[[str, bool], Source], bool]] = {
    "fashion-mnist": (_fashion_mnist, True),
    "animal-mnist": (_animal_mnist, True),
    "digits": (_digits, True),
    "conformal-clip-data": (_conformal_clip_data, False),
}
DATASET_NAMES = (*READERS, "imagefolder:<path>")
# datasets shipped by optional PyPI packages: name -> [(module, how to install it)]
DATASET_PACKAGES: dict[str, list[tuple[str, str]]] = {
    "animal-mnist": [("animal_mnist", "pip install --no-deps 'animal-mnist==0.4'")],
    "conformal-clip-data": [("conformal_clip_data", "pip install 'trustserve[datasets]'")],
}


def require_dataset_packages(name: str) -> list[Any]:
    """The optional packages dataset ``name`` is read from, imported; ``MissingDependencyError`` (one
    line: what to install) when one is missing. Cheap: call it before loading a model."""
    return [
        require_module(module, feature=f"the dataset {name!r}", install=install)
        for module, install in DATASET_PACKAGES.get(name, [])
    ]


def default_invert(name: str) -> bool:
    """The documented inversion default: True for white-on-black MNIST-style sets, else False."""
    if name.startswith("imagefolder:"):
        return False
    if name not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {list(DATASET_NAMES)}")
    return READERS[name][1]


def load_dataset(
    name: str, split: str, *, invert: bool | None = None, limit: int | None = None, seed: int = 0
) -> LabelledImages:
    """Load ``split`` (``train``/``test``/``all``) of dataset ``name``.

    ``invert=None`` applies the dataset's default (see ``default_invert``); ``limit`` keeps a
    class-balanced random subset of that size (seeded by ``seed``).
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {SPLITS}")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    do_invert = default_invert(name) if invert is None else bool(invert)
    if name.startswith("imagefolder:"):
        images, labels, class_names, meta = _imagefolder(
            Path(name.removeprefix("imagefolder:")), split, do_invert
        )
    else:
        images, labels, class_names, meta = READERS[name][0](split, do_invert)
    data = LabelledImages(images, labels, list(class_names), name, meta)
    data.metadata.update(split=split, inverted=do_invert, invert_default=default_invert(name))
    if limit is not None and limit < len(data):
        data = data.subset(balanced_subsample(labels, limit, seed))
        data.metadata.update(limit=limit, limit_seed=seed)
    return data
