"""API documentation routes (/openapi.json, /docs, /redoc) that work offline. With API keys configured they
need the read scope unless ``TRUSTSERVE_PUBLIC_DOCS=true``; without keys they are open like every other
route.

Swagger UI and ReDoc come from the ``fastapi-offline`` wheel (its ``static/`` folder, served at
``/docs-assets``), never from a CDN. The pages are our own HTML with no inline script: a small script of
ours (``app/console/static/docs/``) fetches the OpenAPI document, with the API key the console keeps in
``sessionStorage`` when there is one, and starts the viewer. ``/ui/api`` is the same Swagger page inside
the console: the page itself is public (it holds nothing), the document it loads still needs the key.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from app.api.deps import require_read
from app.api.page_security import DOCS_CSP, SecureStaticFiles, security_headers

OPENAPI_URL = "/openapi.json"
DOCS_ASSETS_URL = "/docs-assets"
DOCS_ASSETS_DIR = Path(str(resources.files("fastapi_offline") / "static"))  # swagger-ui-bundle.js, ...
DOCS_SCRIPTS_URL = "/ui/static/docs"  # our init scripts, shipped with the console


def docs_page(request: Request, viewer: str, title: str) -> HTMLResponse:
    """The HTML of a documentation page (``viewer``: ``swagger`` or ``redoc``), URLs under the root path."""
    root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
    assets, scripts = f"{root}{DOCS_ASSETS_URL}", f"{root}{DOCS_SCRIPTS_URL}"
    head = f'<link rel="stylesheet" href="{assets}/swagger-ui.css">' if viewer == "swagger" else ""
    bundle = "swagger-ui-bundle.js" if viewer == "swagger" else "redoc.standalone.js"
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="{assets}/favicon.png">
{head}
<link rel="stylesheet" href="{scripts}/docs.css">
</head>
<body data-openapi-url="{root}{OPENAPI_URL}" data-console-url="{root}/ui/">
<p id="docs-status" role="status"></p>
<div id="docs-root"></div>
<script src="{assets}/{bundle}"></script>
<script src="{scripts}/spec.js"></script>
<script src="{scripts}/{viewer}-init.js"></script>
</body>
</html>
"""
    return HTMLResponse(page, headers=security_headers(DOCS_CSP))


def install_docs(app: FastAPI, *, public: bool) -> None:
    """Add the documentation routes and assets (the app is built with FastAPI's own ones switched off)."""
    dependencies = [] if public else [Depends(require_read)]
    app.mount(DOCS_ASSETS_URL, SecureStaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return docs_page(request, "swagger", f"{app.title} API")

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc(request: Request) -> HTMLResponse:
        return docs_page(request, "redoc", f"{app.title} API")
