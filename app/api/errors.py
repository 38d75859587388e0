"""The one mapping from errors to HTTP answers: ``{"error": {"code", "message", "details"}}``.

Domain errors (``app.errors``) get their status from ``STATUS_BY_KIND`` — the only place that knows
which kind of problem is which status (as infinity's single exception handler). ``APIError`` is for what
only the HTTP layer can tell (401/403 auth, 408 slow bodies) and carries its status itself. Overload and
unavailability answer with ``Retry-After``; anything unexpected is a logged 500 without internals.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.disconnect import ClientDisconnected
from app.errors import (
    Conflict,
    InvalidInput,
    MalformedInput,
    NotFound,
    Overloaded,
    TooLarge,
    TrustserveError,
    Unavailable,
    UnsupportedMedia,
)

log = logging.getLogger(__name__)

STATUS_BY_KIND: dict[type[TrustserveError], int] = {
    MalformedInput: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    UnsupportedMedia: 415,
    InvalidInput: 422,
    Overloaded: 429,
    Unavailable: 503,
}


class APIError(TrustserveError):
    """An error only the HTTP layer can name (authentication, slow bodies): explicit status and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.status = status
        self.headers = headers


def http_status(exc: TrustserveError) -> int:
    """The status of a domain error: its own (``APIError``) or its kind's (the nearest listed base)."""
    if isinstance(exc, APIError):
        return exc.status
    for kind in type(exc).__mro__:
        if kind in STATUS_BY_KIND:
            return STATUS_BY_KIND[kind]
    return 422


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait of ``seconds`` (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def http_headers(exc: TrustserveError) -> dict[str, str] | None:
    """Headers that go with the answer (Retry-After for overload and unavailability)."""
    if isinstance(exc, APIError):
        return exc.headers
    wait = getattr(exc, "retry_after_s", None)
    return retry_after(wait) if wait is not None else None


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def error_response(exc: TrustserveError) -> JSONResponse:
    """The JSON answer for any domain or API error."""
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), http_status(exc), headers=http_headers(exc)
    )


def _json_safe(details: Any) -> Any:
    """Pydantic error lists may carry non-JSON values (bytes, exceptions); keep them printable."""
    if isinstance(details, list):
        out: list[Any] = []
        for item in details[:20]:
            if isinstance(item, dict):
                out.append(
                    {
                        k: (v if isinstance(v, str | int | float | bool | type(None) | list) else str(v))
                        for k, v in item.items()
                        if k != "input" and k != "ctx" and k != "url"
                    }
                )
            else:
                out.append(str(item))
        return out
    return details


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the JSON error model; unexpected ones become a logged 500 without internals."""

    @app.exception_handler(TrustserveError)
    async def _domain_error(_: Request, exc: TrustserveError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":  # the same answer as every other route's JSON parser
            return JSONResponse(error_body("malformed_json", "the request body is not valid JSON"), 400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'validation failed')}"
        return JSONResponse(error_body("invalid_request", msg, _json_safe(errors)), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, TrustserveError):  # a body limit broken while FastAPI read a body
            return error_response(exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, exc: ClientDisconnected) -> JSONResponse:
        # nobody reads this answer; 499 (nginx's "client closed request") keeps it out of the 5xx counts
        return JSONResponse(error_body("client_closed_request", "the client disconnected"), 499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", "internal server error"), 500, headers={"Connection": "close"}
        )
