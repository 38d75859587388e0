"""app.labelsets.support_features: per-image support encodings kept beside the running sums."""

from __future__ import annotations

import numpy as np
import pytest

from app.labelsets import support_features as sf


def _enc(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 6)).astype(np.float32)


def test_append_keeps_rows_aligned_and_rebuilds_the_sums() -> None:
    arrays: dict[str, np.ndarray] = {}
    classes = np.array([0, 1, 1, 2])
    crop, box = _enc(4, 0), _enc(4, 1)
    assert sf.append_support(arrays, classes, {"crop": crop, "letterbox": box}) == 4
    assert sf.kept_policies(arrays) == ["crop", "letterbox"] and sf.kept_count(arrays) == 4
    sums, counts = sf.prototype_state(arrays, "letterbox", 3)
    assert counts.tolist() == [1, 2, 1]
    np.testing.assert_allclose(sums[1], box[1][1:3].sum(0), rtol=1e-6)
    sf.check_support_arrays(arrays, num_classes=3, embedding_dim=4, feature_dim=6)
    with pytest.raises(ValueError, match="stored for"):
        sf.append_support(arrays, classes, {"crop": crop})


def test_bound_and_class_removal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MAX_KEPT_SUPPORT_IMAGES", 5)
    arrays: dict[str, np.ndarray] = {}
    assert sf.append_support(arrays, np.array([0, 1, 2, 2]), {"crop": _enc(4, 0)}) == 4
    assert sf.append_support(arrays, np.array([1, 0, 2]), {"crop": _enc(3, 1)}) == 1  # only one fits
    assert sf.kept_count(arrays) == 5
    sf.remove_class(arrays, 1)
    assert arrays[sf.SUPPORT_CLASSES].tolist() == [0, 1, 1]
    assert arrays[sf.features_name("crop")].shape == (3, 6)
    arrays[sf.SUPPORT_CLASSES] = np.array([0, 1, 7])
    with pytest.raises(ValueError, match="known classes"):
        sf.check_support_arrays(arrays, num_classes=2, embedding_dim=4, feature_dim=6)


def test_complete_policies_need_every_support_image() -> None:
    arrays: dict[str, np.ndarray] = {}
    sf.append_support(arrays, np.array([0, 1]), {"crop": _enc(2, 0)})
    assert sf.complete_policies(arrays, np.array([1, 1])) == ["crop"]
    assert sf.complete_policies(arrays, np.array([1, 2])) == []  # one image is only in the running sums
