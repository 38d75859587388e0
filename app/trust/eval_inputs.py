"""The evaluation's inputs: the test split (limited), the seeded K-shot supports drawn from the ``train``
split and the calibration subsets disjoint from them, encoded through the on-disk encoding cache (one
``.npz`` per model preset + dataset + split + limit + seed + inversion; ``app.trust.encoding``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.trust.datasets import LabelledImages
from app.trust.encoding import PRIMARY_SPACE, EncodingCache, LoadedModel, cache_path
from app.trust.eval_config import EvalConfig
from app.trust.eval_scoring import EncodedSet
from app.trust.prototypes import draw_support_indices

DatasetLoader = Callable[..., LabelledImages]


def _calibration_indices(train_size: int, support: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded calibration subset of the train split, disjoint from one draw's support: the first ``size``
    images of one fixed permutation that are not support images (so the draws' calibration sets overlap
    as much as their supports allow, and little is encoded twice)."""
    order = np.random.default_rng(seed + 10_007).permutation(train_size)
    return np.sort(order[~np.isin(order, support)][:size])


@dataclass
class EvalInputs:
    """Everything scoring needs, after encoding: test set, support features per (shots, draw), calibration."""

    test: EncodedSet
    support: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # (shots, draw) -> (indices, features)
    support_labels: dict[tuple[int, int], np.ndarray]
    calibration: dict[tuple[int, int], EncodedSet]  # (shots, draw) -> disjoint from that draw's support
    support_sets: dict[tuple[int, int], EncodedSet]  # (shots, draw) -> logits, features of every space
    class_names: list[str]
    dataset_info: dict[str, Any]
    encode_seconds: float


def encode_inputs(config: EvalConfig, model: LoadedModel, dataset_loader: DatasetLoader) -> EvalInputs:
    """Load the test split (limited) and the train split, draw the supports (and the calibration subset),
    and encode exactly the images needed, reusing the on-disk cache."""
    started = time.perf_counter()
    test_data = dataset_loader(
        config.dataset, "test", invert=config.invert, limit=config.test_limit, seed=config.seed
    )
    train_data = dataset_loader(config.dataset, "train", invert=config.invert)
    if list(test_data.class_names) != list(train_data.class_names):
        raise ValueError("train and test splits disagree on the class names")
    invert_tag = {None: "default", True: "inv", False: "raw"}[config.invert]
    text = model.class_embeddings(test_data.class_names)

    def logits_of(emb: np.ndarray) -> np.ndarray:
        return model.logit_scale * emb.astype(np.float64) @ text.T.astype(np.float64) + model.logit_bias

    test_tag = f"test-limit{config.test_limit}-seed{config.seed}-{invert_tag}"
    test_arrays = _encode(config, model, test_data, test_tag, np.arange(len(test_data)))
    draws = {
        (k, d): draw_support_indices(train_data.labels, k, config.seed + d)
        for k in config.shots
        for d in range(config.draws)
    }
    calib = {
        key: _calibration_indices(len(train_data), idx, config.calib_size, config.seed)
        for key, idx in draws.items()
        if config.tune
    }
    train_idx = np.unique(np.concatenate([*draws.values(), *calib.values()]))
    train_arrays = _encode(config, model, train_data, f"train-{invert_tag}", train_idx)
    row = {int(ix): p for p, ix in enumerate(train_idx)}

    def encoded(arrays: dict[str, np.ndarray], positions: np.ndarray, labels: np.ndarray) -> EncodedSet:
        spaces = {name: arrays[f"features:{name}"][positions] for name in model.spaces}
        return EncodedSet(
            logits_of(arrays["embeddings"][positions]), spaces[PRIMARY_SPACE], np.asarray(labels), spaces
        )

    def train_set(indices: np.ndarray) -> EncodedSet:
        return encoded(
            train_arrays, np.array([row[int(i)] for i in indices], dtype=np.int64), train_data.labels[indices]
        )

    support_sets = {key: train_set(idx) for key, idx in draws.items()}
    return EvalInputs(
        test=encoded(test_arrays, np.arange(len(test_data)), test_data.labels),
        support={key: (idx, support_sets[key].features) for key, idx in draws.items()},
        support_labels={key: train_data.labels[idx] for key, idx in draws.items()},
        calibration={key: train_set(idx) for key, idx in calib.items()},
        support_sets=support_sets,
        class_names=list(test_data.class_names),
        dataset_info={
            "name": config.dataset,
            "class_names": list(test_data.class_names),
            "n_test": len(test_data),
            "n_train": len(train_data),
            "n_calibration": int(min((c.size for c in calib.values()), default=0)),
            "policy": model.policy,
            "image_spaces": {name: model.space_name(name) for name in model.spaces},
            "test_metadata": {k: v for k, v in test_data.metadata.items() if _jsonable(v)},
        },
        encode_seconds=time.perf_counter() - started,
    )


def _encode(
    config: EvalConfig, model: LoadedModel, data: LabelledImages, tag: str, indices: np.ndarray
) -> dict[str, np.ndarray]:
    """``embeddings`` and ``features:<space>`` of ``data`` at ``indices``, each unit through its cache."""
    desc = f"encode {config.dataset}/{tag.split('-')[0]} ({model.policy})"

    def vlm(images: list[Image.Image]) -> dict[str, np.ndarray]:
        emb, feat = model.encode_images(images, config.batch_size, desc, progress=False)
        return {"embeddings": emb, f"features:{PRIMARY_SPACE}": feat}

    arrays = EncodingCache(cache_path(config.cache_dir, model, data, tag)).lookup(
        vlm, data, indices, config.batch_size, desc
    )
    for space in model.extra_spaces:

        def extra(images: list[Image.Image], space: str = space) -> dict[str, np.ndarray]:
            return {f"features:{space}": model.encode_space(space, images, config.batch_size)}

        arrays |= EncodingCache(cache_path(config.cache_dir, model, data, tag, space)).lookup(
            extra, data, indices, config.batch_size, f"{desc} [{space}]"
        )
    return arrays


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True
