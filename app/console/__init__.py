"""The web console: plain HTML, CSS and JavaScript modules of our own in ``static/`` (no CDN, no third-party
code), served by the API process at ``/ui/`` (app.api.routes.console). It talks to the same public HTTP API
as any client, with the API key kept in the browser's ``sessionStorage``.

``static/index.html`` loads ``js/main.js``; pages live in ``js/pages/``, the renderers of answer parts in
``js/render/`` (one small function per part, so a new field is one new function), charts in
``js/charts.js`` (SVG drawn by our code). ``static/docs/`` holds the start-up scripts of the API docs
pages (app.api.docs).
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
