"""GET /v1/access: what the presented API key (or no key) may do, so a client such as the web console can
show a read-only view to a read key. Answers without a key (it reveals only what a 401 or 403 would); a
wrong key gets the usual 401."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.auth import ApiKeyAuth
from app.api.errors import APIError
from app.api.schemas_console import AccessOut

router = APIRouter(tags=["access"])


def _allowed(auth: ApiKeyAuth, request: Request, scope: str) -> bool:
    try:
        auth.check(request, scope)
    except APIError as exc:
        if exc.status == 401 and (request.headers.get("authorization") or request.headers.get("x-api-key")):
            raise  # a key was presented and it is wrong
        return False
    return True


@router.get("/v1/access", response_model=AccessOut, summary="What the presented API key may do")
async def access(request: Request) -> AccessOut:
    auth: ApiKeyAuth = request.app.state.auth
    can_read = _allowed(auth, request, "read")
    can_write = can_read and _allowed(auth, request, "admin")
    note = None
    if auth.admin_locked:
        note = (
            "this server listens on a non-loopback address without API keys, so it refuses changes "
            "(TRUSTSERVE_API_KEYS or TRUSTSERVE_ALLOW_UNAUTHENTICATED=true)"
        )
    elif auth.enabled and not can_read:
        note = "this server needs an API key"
    return AccessOut(
        keys_required=auth.enabled,
        scope="admin" if can_write else "read" if can_read else None,
        can_write=can_write,
        docs_public=not auth.enabled or request.app.state.settings.public_docs,
        note=note,
    )
