"""Cancel a request's queued model work when its client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from starlette.types import Receive

T = TypeVar("T")
POLL_INTERVAL_S = 0.05


class _Receiver(Protocol):
    @property
    def receive(self) -> Receive: ...


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready (nothing is sent back)."""


async def _disconnected(request: _Receiver) -> None:
    """Return once the client has gone: waits on the request's ASGI ``receive`` (once the body is read,
    uvicorn answers it with ``http.disconnect`` when the connection closes), instead of polling. Any other
    message (an ASGI server that answers at once) is waited out ``POLL_INTERVAL_S`` before asking again."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return
        await asyncio.sleep(POLL_INTERVAL_S)


async def unless_disconnected(request: _Receiver, work: Awaitable[T]) -> T:
    """Await ``work`` (the request's body already read); if the client disconnects first, cancel it
    (queued batcher items are then skipped) and raise ``ClientDisconnected``.

    One waiting task per request costs nothing while it waits (polling ``Request.is_disconnected`` every
    50 ms was a third of the event loop's CPU under load)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if not task.done() and watcher.exception() is not None:  # cannot tell: just wait for the work
        return await task
    if not task.done():  # the client went away
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected
    if watcher.done():  # finished with the work (a disconnect right after it, or an error): nothing to wait
        if not watcher.cancelled():
            watcher.exception()  # retrieved: the work's answer decides
    else:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return task.result()
