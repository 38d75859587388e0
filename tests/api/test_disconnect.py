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

    async def receive(self) -> dict[str, str]:
        """As uvicorn after the body: blocks until the client goes away."""
        if self.gone_at is None:
            await asyncio.Event().wait()
        await asyncio.sleep(max(0.0, self.gone_at - asyncio.get_running_loop().time()))
        return {"type": "http.disconnect"}


class _ImmediateReceiver:
    """An ASGI server whose ``receive`` answers at once with an empty body message."""

    def __init__(self) -> None:
        self.calls = 0

    async def receive(self) -> dict[str, object]:
        self.calls += 1
        return {"type": "http.request", "body": b"", "more_body": False}


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


def test_a_receive_that_answers_at_once_is_not_a_disconnect_and_is_not_spun_on() -> None:
    async def scenario() -> tuple[str, int]:
        receiver = _ImmediateReceiver()
        result = await unless_disconnected(receiver, asyncio.sleep(0.2, result="done"))
        return result, receiver.calls

    result, calls = asyncio.run(scenario())
    assert result == "done"
    assert 2 <= calls <= 6  # one ask per POLL_INTERVAL_S, not a busy loop


def test_the_work_error_reaches_the_caller() -> None:
    async def failing() -> None:
        raise ValueError("model failed")

    with pytest.raises(ValueError, match="model failed"):
        asyncio.run(unless_disconnected(_Request(None), failing()))


def test_uvicorn_reports_a_client_that_closes_mid_request() -> None:
    """The watcher relies on uvicorn answering ``receive`` with ``http.disconnect`` once the body is in and
    the connection closes: a real uvicorn (httptools) server, a raw socket that sends a request and leaves."""
    import socket

    import uvicorn
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    from tests.support.live_server import free_port

    outcome: asyncio.Queue[str] = asyncio.Queue()

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        await request.body()
        try:
            await unless_disconnected(request, asyncio.sleep(30))
        except ClientDisconnected:
            outcome.put_nowait("disconnected")
            return
        await PlainTextResponse("late")(scope, receive, send)

    async def scenario() -> str:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, http="httptools", log_level="warning", lifespan="off"
            )
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        with socket.create_connection(("127.0.0.1", port)) as client:
            body = b"x" * 100
            head = f"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            await loop.sock_sendall(client, head + body)
            await asyncio.sleep(0.2)
        try:
            return await asyncio.wait_for(outcome.get(), 5)
        finally:
            server.should_exit = True
            await serving

    assert asyncio.run(scenario()) == "disconnected"


def test_a_failing_receive_does_not_cancel_the_work() -> None:
    class _Broken:
        async def receive(self) -> dict[str, str]:
            raise RuntimeError("receive failed")

    assert asyncio.run(unless_disconnected(_Broken(), asyncio.sleep(0.05, result="ok"))) == "ok"
