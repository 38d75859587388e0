"""A client that goes away gets its queued model work cancelled: the batcher never runs it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.engine.batcher import DynamicBatcher


class _Request:
    def __init__(self, gone_after_s: float | None) -> None:
        self.gone_at = None if gone_after_s is None else asyncio.get_running_loop().time() + gone_after_s

    async def is_disconnected(self) -> bool:
        return self.gone_at is not None and asyncio.get_running_loop().time() >= self.gone_at


def test_disconnected_request_is_cancelled_and_skipped_by_the_batcher() -> None:
    ran: list[int] = []
    gate = threading.Event()

    def model(batch: list[int]) -> list[int]:
        gate.wait(5)
        ran.extend(batch)
        return batch

    async def scenario() -> None:
        b = DynamicBatcher("t", model, executor=ThreadPoolExecutor(1), max_batch_size=1, max_wait_ms=0)
        busy = asyncio.create_task(unless_disconnected(_Request(None), b.submit_many([0])))
        await asyncio.sleep(0.05)  # item 0 holds the model
        with pytest.raises(ClientDisconnected):
            await unless_disconnected(_Request(0.1), b.submit_many([1]))  # queued, then the client leaves
        gate.set()
        assert await busy == [0]
        assert await unless_disconnected(_Request(None), b.submit_many([2])) == [2]
        await b.stop()

    asyncio.run(scenario())
    assert ran == [0, 2]
