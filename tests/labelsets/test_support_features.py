"""app.labelsets.support_features: per-image support encodings (per aspect policy and image space) kept
beside the running sums."""

from __future__ import annotations

import numpy as np
import pytest

from app.labelsets import support_features as sf


def _enc(n: int, seed: int, independent: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feats = {"own": rng.normal(size=(n, 6)).astype(np.float32)}
    if independent:
        feats["independent"] = rng.normal(size=(n, 5)).astype(np.float32)
    return rng.normal(size=(n, 4)).astype(np.float32), feats


def test_append_keeps_rows_aligned_and_rebuilds_the_sums() -> None:
    arrays: dict[str, np.ndarray] = {}
    classes = np.array([0, 1, 1, 2])
    crop, box = _enc(4, 0), _enc(4, 1)
    assert sf.append_support(arrays, classes, {"crop": crop, "letterbox": box}) == 4
    assert sf.kept_policies(arrays) == ["crop", "letterbox"] and sf.kept_count(arrays) == 4
    sums, counts = sf.prototype_state(arrays, "letterbox", 3)
    assert counts.tolist() == [1, 2, 1]
    np.testing.assert_allclose(sums[1], box[1]["own"][1:3].sum(0), rtol=1e-6)
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


def test_spaces_are_kept_per_policy_rebuild_their_own_sums_and_are_checked() -> None:
    arrays: dict[str, np.ndarray] = {}
    classes = np.array([0, 1, 1])
    crop, box = _enc(3, 0, independent=True), _enc(3, 1, independent=True)
    sf.append_support(arrays, classes, {"crop": crop, "letterbox": box})
    assert sf.kept_spaces(arrays, "crop") == ["own", "independent"]
    assert sf.complete_spaces(arrays, np.array([1, 2]), ["crop", "letterbox"]) == ["own", "independent"]
    sums, _ = sf.prototype_state(arrays, "letterbox", 2, "independent")
    assert sums.shape == (2, 5)
    np.testing.assert_allclose(sums[1], box[1]["independent"][1:3].sum(0), rtol=1e-6)
    sf.check_support_arrays(arrays, 2, 4, feature_dim=5, served_space="independent")
    with pytest.raises(ValueError, match="width"):
        sf.check_support_arrays(arrays, 2, 4, feature_dim=6, served_space="independent")
    with pytest.raises(ValueError, match="stored for"):  # the rows stay aligned in every space
        sf.append_support(arrays, classes, {"crop": _enc(3, 2), "letterbox": _enc(3, 3)})
    sf.drop_spaces(arrays, ["independent"])
    assert sf.kept_spaces(arrays, "crop") == ["own"]
    arrays[sf.features_name("crop", "independent")] = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        sf.check_support_arrays(arrays, 2, 4, feature_dim=6)
