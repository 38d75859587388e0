"""Error model: every client-fixable problem is an ``APIError`` rendered as
``{"error": {"code", "message", "details"}}`` with a 4xx status; overload is 429/503 with Retry-After."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.disconnect import ClientDisconnected

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error with an HTTP status, a stable machine code and a human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def bad_request(message: str, code: str = "bad_request", details: Any = None) -> APIError:
    return APIError(400, code, message, details)


def not_found(message: str, code: str = "not_found") -> APIError:
    return APIError(404, code, message)


def conflict(message: str, code: str = "conflict", details: Any = None) -> APIError:
    return APIError(409, code, message, details)


def unprocessable(message: str, code: str = "invalid_input", details: Any = None) -> APIError:
    return APIError(422, code, message, details)


def overloaded(message: str, retry_after_s: float) -> APIError:
    """429 with Retry-After: the queue is full; answered at once instead of letting latency grow."""
    return APIError(
        429, "overloaded", message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    )


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


def _json_safe(details: Any) -> Any:
    """Pydantic error lists may carry non-JSON values (bytes, exceptions); keep them printable."""
    if isinstance(details, list):
        out = []
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

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'validation failed')}"
        return JSONResponse(error_body("invalid_request", msg, _json_safe(errors)), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, APIError):  # a body limit broken while FastAPI read a JSON body
            return await _api_error(request, exc.__cause__)
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
