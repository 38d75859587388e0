"""Cancel a request's queued model work when its client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")
POLL_INTERVAL_S = 0.05


class _Disconnectable(Protocol):
    async def is_disconnected(self) -> bool: ...


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready (nothing is sent back)."""


async def unless_disconnected(request: _Disconnectable, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (queued batcher items are then skipped)
    and raise ``ClientDisconnected``."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not task.done():
            if await request.is_disconnected():
                task.cancel()
                return
            await asyncio.sleep(POLL_INTERVAL_S)

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
