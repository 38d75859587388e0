"""``app.engine.text_cache.TextEmbeddingCache`` as a unit: keyed by (model, prompt), least recently used
out first, bounded, counting hits and misses."""

from __future__ import annotations

import threading

import numpy as np

from app.engine.text_cache import TextEmbeddingCache


def _vectors(n: int, start: float = 0.0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)


def test_misses_are_deduplicated_in_order_then_hit() -> None:
    cache = TextEmbeddingCache(capacity=10)
    found, missing = cache.get_many("m", ["a", "b", "a", "c"])
    assert found == {} and missing == ["a", "b", "c"] and cache.misses == 3
    cache.put_many("m", missing, _vectors(3))
    found, missing = cache.get_many("m", ["c", "a"])
    assert missing == [] and cache.hits == 2
    np.testing.assert_array_equal(found["c"], _vectors(3)[2])


def test_the_model_is_part_of_the_key() -> None:
    cache = TextEmbeddingCache(capacity=10)
    cache.put_many("m1", ["a"], _vectors(1))
    assert cache.get_many("m2", ["a"]) == ({}, ["a"])


def test_least_recently_used_goes_first_and_size_is_bounded() -> None:
    cache = TextEmbeddingCache(capacity=2)
    cache.put_many("m", ["a", "b"], _vectors(2))
    cache.get_many("m", ["a"])  # a is now the most recent
    cache.put_many("m", ["c"], _vectors(1, 9.0))
    assert len(cache) == 2
    assert cache.get_many("m", ["b"])[1] == ["b"]  # evicted
    assert set(cache.get_many("m", ["a", "c"])[0]) == {"a", "c"}


def test_zero_capacity_stores_nothing() -> None:
    cache = TextEmbeddingCache(capacity=0)
    cache.put_many("m", ["a"], _vectors(1))
    assert len(cache) == 0


def test_concurrent_use_keeps_the_bound() -> None:
    cache = TextEmbeddingCache(capacity=50)

    def work(worker: int) -> None:
        for i in range(200):
            prompts = [f"{worker}-{i}", f"shared-{i % 7}"]
            _, missing = cache.get_many("m", prompts)
            if missing:
                cache.put_many("m", missing, _vectors(len(missing)))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
