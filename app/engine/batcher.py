"""Dynamic micro-batching with back-pressure.

Requests put single items on a bounded queue; one worker gathers up to ``max_batch_size`` items, waiting at
most ``max_wait_ms`` after the first one, and runs ONE model call per batch on a dedicated model thread (so
the event loop and the pre-processing pool keep running while the model computes). A full queue answers
at once with ``QueueFullError`` (-> 429 + Retry-After); a cancelled request's queued item is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.errors import Overloaded, Unavailable

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class QueueFullError(Overloaded):
    """The batcher's queue is at capacity: the client is told to retry after ``retry_after_s`` (429)."""

    def __init__(self, name: str, capacity: int, retry_after_s: float) -> None:
        super().__init__(
            f"{name} queue is full ({capacity} waiting); retry after {retry_after_s:.1f} s",
            retry_after_s=retry_after_s,
        )


class InferenceTimeout(Unavailable, TimeoutError):
    """Queued work did not finish within the request's time limit (503 with Retry-After)."""

    code = "timeout"


@dataclass
class _Item(Generic[In]):
    payload: In
    future: asyncio.Future[Any]
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Running counters exposed by GET /v1/models."""

    batches: int = 0
    items: int = 0
    last_batch_size: int = 0
    busy_seconds: float = 0.0


class DynamicBatcher(Generic[In, Out]):
    """Gathers single items into batches for ``run_batch(list[In]) -> list[Out]`` (a blocking function)."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[In]], Sequence[Out]],
        *,
        executor: ThreadPoolExecutor,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue_size: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue_wait: Callable[[float], None] | None = None,
        on_rejected: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._on_queue_wait = on_queue_wait
        self._on_rejected = on_rejected
        self._queue: asyncio.Queue[_Item[In]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = BatchStats()

    # lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker on the running event loop (idempotent; restarts on a different loop)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._loop is not loop:
            self._loop = loop
            self._queue = asyncio.Queue(maxsize=self.max_queue_size)
            self._worker = loop.create_task(self._work(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("server shutting down"))

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after_s(self) -> float:
        """Estimated time to drain the queue, from the observed per-item cost (at least 1 s)."""
        per_item = self.stats.busy_seconds / self.stats.items if self.stats.items else 0.05
        return max(1.0, self.queue_depth * per_item)

    # submission ----------------------------------------------------------------------------------
    async def submit_many(self, payloads: Sequence[In], timeout_s: float | None = None) -> list[Out]:
        """Queue several items (all or none: raises QueueFullError when they do not all fit, and
        ``InferenceTimeout`` when they have not run within ``timeout_s``)."""
        self.start()
        assert self._queue is not None
        if self._queue.qsize() + len(payloads) > self.max_queue_size:
            if self._on_rejected is not None:
                self._on_rejected()
            raise QueueFullError(self.name, self.max_queue_size, self.retry_after_s())
        loop = asyncio.get_running_loop()
        items = [_Item(p, loop.create_future()) for p in payloads]
        for item in items:
            self._queue.put_nowait(item)
        futures = [i.future for i in items]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout_s))
        except TimeoutError:
            for f in futures:  # drop whatever has not run yet
                f.cancel()
            raise InferenceTimeout(
                f"inference did not finish within {timeout_s:g} s (server busy); retry later"
            ) from None
        except BaseException:
            for f in futures:  # timeout or client gone: drop whatever has not run yet
                f.cancel()
            raise

    # worker --------------------------------------------------------------------------------------
    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [item for item in batch if not item.future.done()]  # skip cancelled requests
            if not live:
                continue
            now = time.perf_counter()
            if self._on_queue_wait is not None:
                for item in live:
                    self._on_queue_wait(now - item.enqueued_at)
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(
                    self._executor, self._run_batch, [i.payload for i in live]
                )
            except Exception as exc:  # the model failed: every waiter learns it, the worker goes on
                log.exception("batch of %d failed in %s", len(live), self.name)
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.last_batch_size = len(live)
            self.stats.busy_seconds += elapsed
            if self._on_batch is not None:
                self._on_batch(len(live), elapsed)
            for item, out in zip(live, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(out)
