"""The web console's pages: ``/ui/`` (the console), ``/ui/api`` (Swagger UI inside the console, loading the
OpenAPI document with the console's key) and the static files under ``/ui/static``. ``/`` and ``/ui``
redirect to ``/ui/`` with a relative Location (never built from the Host header). The pages are public:
they hold no data; everything they show comes from the API, which checks the key on every request."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from app.api.docs import docs_page
from app.api.page_security import CONSOLE_CSP, SecureStaticFiles, security_headers
from app.console import STATIC_DIR


def install_console(app: FastAPI) -> None:
    """Mount the console's static files and add its pages (not part of the OpenAPI document)."""
    app.mount("/ui/static", SecureStaticFiles(directory=STATIC_DIR), name="console-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    async def console_redirect() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=307)

    @app.get("/ui/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=security_headers(CONSOLE_CSP))

    @app.get("/ui/api", include_in_schema=False)
    async def console_api_docs(request: Request) -> HTMLResponse:
        return docs_page(request, "swagger", f"{app.title} API")
