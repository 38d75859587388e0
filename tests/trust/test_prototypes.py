"""Tests for app.trust.prototypes: incremental prototype bank and seeded K-shot draws."""

import io

import numpy as np
import pytest

from app.trust.prototypes import PrototypeBank, draw_support_indices


def test_prototype_is_normalised_mean_of_raw_features() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(10, 4)) * rng.uniform(0.1, 10, size=(10, 1))  # very different norms
    labels = np.array([0] * 6 + [2] * 4)
    bank = PrototypeBank.from_features(feats, labels, num_classes=3)
    protos = bank.prototypes()
    for c in (0, 2):
        mean = feats[labels == c].mean(0)
        np.testing.assert_allclose(protos[c], mean / np.linalg.norm(mean), rtol=1e-5)
    np.testing.assert_array_equal(bank.has_prototype, [True, False, True])
    np.testing.assert_array_equal(protos[1], 0.0)
    np.testing.assert_array_equal(bank.counts, [6, 0, 4])


def test_incremental_adds_equal_one_batch() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(9, 5))
    labels = rng.integers(0, 3, 9)
    whole = PrototypeBank.from_features(feats, labels, 3)
    step = PrototypeBank(3, 5)
    for f, y in zip(feats, labels):
        step.add(int(y), f)
    np.testing.assert_allclose(step.prototypes(), whole.prototypes(), atol=1e-6)
    step.add(1, feats[:2])  # a batch for one class
    assert step.counts[1] == whole.counts[1] + 2


def test_round_trip_through_npz_without_pickle() -> None:
    bank = PrototypeBank.from_features(np.eye(3), np.array([0, 1, 1]), 2)
    buf = io.BytesIO()
    np.savez(buf, **bank.to_arrays())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        restored = PrototypeBank.from_arrays(data["sums"], data["counts"])
    np.testing.assert_array_equal(restored.prototypes(), bank.prototypes())
    np.testing.assert_array_equal(restored.counts, bank.counts)


def test_bad_input_is_rejected() -> None:
    bank = PrototypeBank(2, 3)
    with pytest.raises(ValueError):
        bank.add(2, np.ones(3))
    with pytest.raises(ValueError):
        bank.add(0, np.ones(4))
    with pytest.raises(ValueError):
        bank.add(0, np.array([np.nan, 0, 0]))
    with pytest.raises(ValueError):
        PrototypeBank.from_arrays(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError):
        PrototypeBank(0, 3)


def test_support_draw_is_seeded_balanced_and_capped() -> None:
    labels = np.array([0] * 20 + [1] * 3 + [2] * 30)
    a = draw_support_indices(labels, 5, seed=0)
    np.testing.assert_array_equal(a, draw_support_indices(labels, 5, seed=0))
    assert not np.array_equal(a, draw_support_indices(labels, 5, seed=1))
    np.testing.assert_array_equal(np.bincount(labels[a]), [5, 3, 5])
    assert len(set(a.tolist())) == a.size and np.all(np.diff(a) > 0)
    with pytest.raises(ValueError):
        draw_support_indices(labels, 0, seed=0)
