"""Optional API keys with two scopes: ``read`` (classify, predict) and ``admin`` (everything, incl. changes).

Keys come from ``TRUSTSERVE_API_KEYS`` (``key[:scope],...``, scope defaults to read) and/or a secret file
(``TRUSTSERVE_API_KEYS_FILE``, one ``key[:scope]`` per line, ``#`` comments). Keys are compared in constant
time against every configured key and are never logged or echoed.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from app.api.errors import APIError

SCOPES = ("read", "admin")


@dataclass(frozen=True)
class _Key:
    secret: bytes
    scope: str


def _parse_entries(entries: list[str], source: str) -> list[_Key]:
    keys = []
    for n, entry in enumerate(entries, 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        secret, _, scope = entry.partition(":")
        scope = scope.strip() or "read"
        if scope not in SCOPES:
            raise ValueError(f"{source} entry {n}: scope must be one of {SCOPES}")
        if len(secret.strip()) < 8:
            raise ValueError(f"{source} entry {n}: API keys must have at least 8 characters")
        keys.append(_Key(secret.strip().encode(), scope))
    return keys


class ApiKeyAuth:
    """Checks the ``Authorization: Bearer <key>`` or ``X-API-Key`` header against configured keys."""

    def __init__(self, inline: str | None = None, keys_file: Path | None = None) -> None:
        keys: list[_Key] = []
        if inline:
            keys += _parse_entries(inline.split(","), "TRUSTSERVE_API_KEYS")
        if keys_file is not None:
            keys += _parse_entries(Path(keys_file).read_text().splitlines(), "TRUSTSERVE_API_KEYS_FILE")
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, request: Request, scope: str) -> None:
        if not self._keys:
            return
        presented = request.headers.get("x-api-key")
        auth = request.headers.get("authorization")
        if presented is None and auth is not None:
            kind, _, value = auth.partition(" ")
            if kind.lower() == "bearer":
                presented = value.strip()
        if not presented:
            raise APIError(
                401,
                "unauthorized",
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        candidate = presented.encode("utf-8", "surrogateescape")
        matched: str | None = None
        for key in self._keys:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(candidate, key.secret):
                matched = key.scope
        if matched is None:
            raise APIError(401, "unauthorized", "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if scope == "admin" and matched != "admin":
            raise APIError(403, "forbidden", "this API key has the read scope; the admin scope is required")
