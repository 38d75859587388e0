"""VectorIndex: exact flat search, HNSW recall against flat, serialisation; the serving index whose HNSW
graph is built in the background."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from app.labelsets.index import (
    _ONE_BUILD_AT_A_TIME,
    IndexParams,
    VectorIndex,
    normalise_rows,
    serving_index,
)


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


def test_serving_index_below_threshold_is_flat_with_nothing_pending() -> None:
    vectors = _vectors(50, 16)
    index = serving_index(vectors, np.arange(50), IndexParams(hnsw_threshold=100))
    assert index.kind == "flat" and index.pending is None and index.ntotal == 50


def test_serving_index_answers_exactly_while_the_graph_builds_then_swaps_it_in() -> None:
    """The HNSW build runs in the background: the caller gets an exact index at once (the build is held
    back here by taking the one-build-at-a-time lock), searches are exact meanwhile, then the graph
    replaces it in place."""
    vectors = _vectors(600, 16)
    ids = np.arange(600) + 1000
    queries = _vectors(20, 16, seed=3)
    with _ONE_BUILD_AT_A_TIME:
        index = serving_index(vectors, ids, IndexParams(hnsw_threshold=500))
        assert index.kind == "flat" and not index.pending.done()
        _, got = index.search(queries, 5)
        np.testing.assert_array_equal(got, np.argsort(-(queries @ vectors.T), axis=1)[:, :5] + 1000)
    index.wait_built(60)
    assert index.kind == "hnsw" and index.ntotal == 600
    _, approx = index.search(queries, 1)
    assert np.mean(approx[:, 0] == got[:, 0]) >= 0.95
    restored = VectorIndex.from_bytes(index.to_bytes())
    assert restored.kind == "hnsw"


def test_a_replaced_index_stops_its_build() -> None:
    with _ONE_BUILD_AT_A_TIME:
        index = serving_index(_vectors(600, 16), np.arange(600), IndexParams(hnsw_threshold=500))
        pending = index.pending
        del index
        gc.collect()
    pending.result(60)  # finished without anything to swap into (and without error)


def test_stored_index_is_used_only_when_it_fits_the_vectors_and_the_kind() -> None:
    vectors = _vectors(300, 16)
    ids = np.arange(300)
    flat_blob = VectorIndex.build(vectors, ids, kind="flat").to_bytes()
    hnsw_blob = VectorIndex.build(vectors, ids, kind="hnsw").to_bytes()
    params = IndexParams(hnsw_threshold=200)
    used = serving_index(vectors, ids, params, hnsw_blob)
    assert used.kind == "hnsw" and used.pending is None  # the stored graph: nothing to build
    rebuilt = serving_index(vectors, ids, params, flat_blob)  # stored flat, HNSW wanted: build it
    assert rebuilt.pending is not None
    rebuilt.wait_built(60)
    assert rebuilt.kind == "hnsw"
    small = serving_index(vectors[:100], ids[:100], params, hnsw_blob)  # wrong size: a fresh flat one
    assert small.kind == "flat" and small.ntotal == 100 and small.pending is None
