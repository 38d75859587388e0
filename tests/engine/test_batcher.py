"""Dynamic batcher: one model call per batch, bounded queue, cancellation, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.engine.batcher import DynamicBatcher, QueueFullError


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_share_one_model_call() -> None:
    calls: list[int] = []

    def model(batch: list[int]) -> list[int]:
        calls.append(len(batch))
        return [x * 2 for x in batch]

    async def scenario() -> list[list[int]]:
        b = DynamicBatcher("t", model, executor=ThreadPoolExecutor(1), max_batch_size=8, max_wait_ms=50)
        b.start()
        out = await asyncio.gather(*(b.submit_many([i]) for i in range(8)))
        await b.stop()
        return out

    assert _run(scenario()) == [[i * 2] for i in range(8)]
    assert calls == [8]


def test_batches_never_exceed_max_size_and_keep_order() -> None:
    calls: list[int] = []

    def model(batch: list[int]) -> list[int]:
        calls.append(len(batch))
        return batch

    async def scenario() -> list[int]:
        b = DynamicBatcher("t", model, executor=ThreadPoolExecutor(1), max_batch_size=4, max_wait_ms=1)
        out = await b.submit_many(list(range(10)))
        await b.stop()
        return out

    assert _run(scenario()) == list(range(10))
    assert max(calls) <= 4
    assert sum(calls) == 10


def test_full_queue_is_refused_at_once() -> None:
    release = threading.Event()

    def slow_model(batch: list[int]) -> list[int]:
        release.wait(5)
        return batch

    async def scenario() -> float:
        b = DynamicBatcher(
            "t", slow_model, executor=ThreadPoolExecutor(1), max_batch_size=1, max_wait_ms=0, max_queue_size=2
        )
        first = asyncio.create_task(b.submit_many([0]))
        await asyncio.sleep(0.05)  # the worker holds item 0 in the model
        queued = asyncio.create_task(b.submit_many([1, 2]))
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(QueueFullError) as info:
            await b.submit_many([3])
        elapsed = time.perf_counter() - started
        assert info.value.retry_after_s >= 1
        release.set()
        assert await first == [0]
        assert await queued == [1, 2]
        await b.stop()
        return elapsed

    assert _run(scenario()) < 0.05


def test_cancelled_requests_are_skipped_and_timeouts_raise() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def model(batch: list[int]) -> list[int]:
        gate.wait(5)
        seen.extend(batch)
        return batch

    async def scenario() -> None:
        b = DynamicBatcher("t", model, executor=ThreadPoolExecutor(1), max_batch_size=1, max_wait_ms=0)
        first = asyncio.create_task(b.submit_many([0]))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await b.submit_many([1], timeout_s=0.05)  # queued behind item 0, then given up
        gate.set()
        await first
        assert await b.submit_many([2]) == [2]
        await b.stop()

    _run(scenario())
    assert seen == [0, 2]


def test_model_failure_reaches_every_waiter_and_worker_survives() -> None:
    def model(batch: list[int]) -> list[int]:
        if -1 in batch:
            raise RuntimeError("boom")
        return batch

    async def scenario() -> None:
        b = DynamicBatcher("t", model, executor=ThreadPoolExecutor(1), max_batch_size=4, max_wait_ms=20)
        results = await asyncio.gather(b.submit_many([-1]), b.submit_many([5]), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await b.submit_many([7]) == [7]
        await b.stop()

    _run(scenario())
