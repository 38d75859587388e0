"""VectorIndex: exact flat search, HNSW recall against flat, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from app.labelsets.index import IndexParams, VectorIndex, normalise_rows


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return normalise_rows(np.random.default_rng(seed).standard_normal((n, d)))


def test_flat_matches_brute_force_and_maps_ids() -> None:
    vectors = _vectors(50, 16)
    ids = np.arange(100, 150)
    index = VectorIndex.build(vectors, ids)
    assert index.kind == "flat"
    queries = _vectors(7, 16, seed=1)
    sims, got = index.search(queries, 5)
    brute = queries @ vectors.T
    expected = np.argsort(-brute, axis=1)[:, :5] + 100
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(sims, np.sort(brute, axis=1)[:, ::-1][:, :5], rtol=1e-5)


def test_fewer_vectors_than_k_pads_with_minus_one() -> None:
    index = VectorIndex.build(_vectors(2, 8))
    sims, ids = index.search(_vectors(1, 8, seed=2), 4)
    assert list(ids[0, 2:]) == [-1, -1]
    assert np.isneginf(sims[0, 2:]).all()
    empty = VectorIndex.build(np.zeros((0, 8), np.float32))
    assert empty.search(_vectors(1, 8), 3)[1].tolist() == [[-1, -1, -1]]


def test_hnsw_above_threshold_has_high_recall_against_flat() -> None:
    """Recall@10 of the approximate index against the exact one, queries near indexed vectors."""
    vectors = _vectors(3000, 32)
    params = IndexParams(hnsw_threshold=1000)
    hnsw = VectorIndex.build(vectors, params=params)
    flat = VectorIndex.build(vectors, kind="flat")
    assert hnsw.kind == "hnsw"
    rng = np.random.default_rng(5)
    queries = normalise_rows(vectors[rng.choice(3000, 200)] + 0.3 * rng.standard_normal((200, 32)) / 6)
    _, approx = hnsw.search(queries, 10)
    _, exact = flat.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall
    top1 = np.mean(approx[:, 0] == exact[:, 0])
    assert top1 >= 0.98, top1


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_serialisation_round_trip(kind: str) -> None:
    vectors = _vectors(300, 16)
    index = VectorIndex.build(vectors, np.arange(300) * 2, kind=kind)
    restored = VectorIndex.from_bytes(index.to_bytes())
    assert restored.kind == kind
    queries = _vectors(5, 16, seed=9)
    np.testing.assert_array_equal(index.search(queries, 3)[1], restored.search(queries, 3)[1])
    assert restored.ntotal == 300 and restored.dim == 16
    assert index.memory_bytes() > 300 * 16 * 4


def test_bad_shapes_raise() -> None:
    index = VectorIndex.build(_vectors(4, 8))
    with pytest.raises(ValueError):
        index.search(np.zeros((2, 7), np.float32), 1)
    with pytest.raises(ValueError):
        VectorIndex.build(np.zeros(8, np.float32))
