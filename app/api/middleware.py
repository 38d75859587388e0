"""ASGI middleware: request ids, access log + Prometheus request metrics, and the request-body limits
(size, JSON element count, upload time and rate, bytes being received at once across clients)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import APIError, error_body
from app.config import Settings
from app.observability.logging import request_id_var
from app.observability.metrics import ServiceMetrics

access_log = logging.getLogger("trustserve.access")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOGGED_PATH_CHARS = 200  # access-log lines hold at most this much of a path


def _route_template(scope: Scope) -> str:
    """The matched route path (``/v1/label-sets/{label_set_id}``), never the raw path (bounded labels)."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def shorten(text: str, limit: int = LOGGED_PATH_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}…[{len(text)} chars]"


@dataclass(frozen=True)
class BodyLimits:
    """What one request body may cost (Settings; docs/RELIABILITY.md, "Resource budget")."""

    max_bytes: int = 32 * 2**20
    max_json_items: int = 200_000
    timeout_s: float = 20.0
    min_rate: int = 16_384
    max_buffered_bytes: int = 256 * 2**20

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        return cls(
            max_bytes=settings.max_body_bytes,
            max_json_items=settings.max_json_items,
            timeout_s=settings.body_timeout_s,
            min_rate=settings.body_min_rate,
            max_buffered_bytes=settings.max_buffered_body_bytes,
        )


def json_items_upper_bound(chunk: bytes) -> int:
    """An upper bound on the values and containers a JSON text adds: every value after the first in a
    container follows a comma, every container opens with ``[`` or ``{`` (bytes inside strings only make
    the bound looser). Counted before anything is parsed."""
    return chunk.count(b",") + 2 * (chunk.count(b"[") + chunk.count(b"{"))


class BodyRefused(APIError):
    """The body broke a limit while it was being received (raised from ``receive``, so the route that was
    reading renders it through the normal error handler; the middleware answers if nobody did)."""


class RequestContextMiddleware:
    """Outermost layer: X-Request-ID in and out, body limits, metrics and one access-log line.

    Body limits, checked as the body arrives (before any route parses it):
    - size: ``Content-Length`` above the limit → 413 at once; a body growing past it → 413;
    - JSON (``application/json``): more than ``max_json_items`` values + containers → 413;
    - time: the body must be in within ``timeout_s`` + 1 s per ``min_rate`` bytes received (a slow or
      stalled upload → 408, connection closed), after the Apache ``mod_reqtimeout`` rule;
    - all clients together: bodies of requests in flight above ``max_buffered_bytes`` → 429.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, limits: BodyLimits | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.limits = limits or BodyLimits()
        self.buffered_bytes = 0  # bodies (or their received part) of requests in flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        declared = headers.get(b"content-length")
        too_large = False
        if declared is not None:
            try:
                too_large = int(declared) > limits.max_bytes
            except ValueError:
                too_large = False
        is_json = headers.get(b"content-type", b"").split(b";")[0].strip().lower() == b"application/json"
        received = 0
        json_items = 0
        body_done = False
        loop = asyncio.get_running_loop()
        body_started = loop.time()

        async def limited_receive() -> Message:
            nonlocal received, json_items, body_done
            if body_done:  # after the body: disconnect listeners wait as long as they like
                return await receive()
            remaining = body_started + limits.timeout_s + received / limits.min_rate - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                raise BodyRefused(
                    408,
                    "body_timeout",
                    f"the request body arrived too slowly ({received} bytes in "
                    f"{loop.time() - body_started:.0f} s; allowed {limits.timeout_s:g} s plus 1 s per "
                    f"{limits.min_rate} bytes)",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request":
                body_done = True
                return message
            chunk = message.get("body", b"")
            received += len(chunk)
            self.buffered_bytes += len(chunk)
            body_done = not message.get("more_body", False)
            if received > limits.max_bytes:
                raise BodyRefused(
                    413, "payload_too_large", f"request body exceeds the limit of {limits.max_bytes} bytes"
                )
            if is_json:
                json_items += json_items_upper_bound(chunk)
                if json_items > limits.max_json_items:
                    raise BodyRefused(
                        413,
                        "json_too_complex",
                        f"the JSON body holds more than {limits.max_json_items} values; send fewer items",
                    )
            if self.buffered_bytes > limits.max_buffered_bytes:
                raise BodyRefused(
                    429,
                    "overloaded",
                    "the server is receiving too many large uploads at once; retry shortly",
                    headers={"Retry-After": "2", "Connection": "close"},
                )
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if too_large:
                await self._refuse(
                    send_with_id,
                    BodyRefused(413, "payload_too_large", f"request body exceeds {limits.max_bytes} bytes"),
                )
            else:
                try:
                    await self.app(scope, limited_receive, send_with_id)
                except BodyRefused as refused:
                    if not status_holder["started"]:
                        await self._refuse(send_with_id, refused)
        finally:
            self.buffered_bytes -= received
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "")
            status = status_holder["status"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.request_duration.labels(route, method).observe(elapsed)
            if route not in {"/metrics", "/livez"}:
                access_log.info(
                    "%s %s %s",
                    method,
                    shorten(scope.get("path", "")),
                    status,
                    extra={"status": status, "route": route, "duration_ms": round(elapsed * 1000, 2)},
                )
            request_id_var.reset(token)

    async def _refuse(self, send: Send, refused: BodyRefused) -> None:
        body = json.dumps(error_body(refused.code, refused.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *((k.lower().encode(), v.encode()) for k, v in (refused.headers or {}).items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
