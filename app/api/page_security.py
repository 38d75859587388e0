"""Security headers of the pages and static files the server itself serves (the web console and the API
docs): a Content-Security-Policy that allows scripts, styles, images and fetches from this origin only (no
inline script anywhere; the docs viewers need inline styles), no framing, no MIME sniffing, no referrer."""

from __future__ import annotations

import os

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

_COMMON = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# the console: our own code only; previews of chosen images and downloads of exports are blob: URLs
CONSOLE_CSP = f"{_COMMON}; style-src 'self'; img-src 'self' blob: data:"
# Swagger UI and ReDoc set inline styles; ReDoc runs its search in a blob: worker
DOCS_CSP = f"{_COMMON}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:"


def security_headers(csp: str | None = None) -> dict[str, str]:
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }
    if csp is not None:
        headers["Content-Security-Policy"] = csp
    return headers


class SecureStaticFiles(StaticFiles):
    """Starlette's static files (no directory listing, no paths outside ``directory``) with the headers
    above; revalidated on every load (``no-cache``: a new release is picked up at once)."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(security_headers())
        return response
