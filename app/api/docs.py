"""API documentation routes (/openapi.json, /docs, /redoc). With API keys configured they need the read
scope unless ``TRUSTSERVE_PUBLIC_DOCS=true``; without keys they are open like every other route."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app.api.deps import require_read

OPENAPI_URL = "/openapi.json"


def install_docs(app: FastAPI, *, public: bool) -> None:
    """Add the three documentation routes (the app is built with FastAPI's own ones switched off)."""
    dependencies = [] if public else [Depends(require_read)]

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{app.title} API")

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{app.title} API")
