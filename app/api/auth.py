"""Optional API keys with two scopes: ``read`` (classify, predict) and ``admin`` (everything, incl. changes).

Keys come from ``TRUSTSERVE_API_KEYS`` (``key[:scope],...``, scope defaults to read) and/or a secret file
(``TRUSTSERVE_API_KEYS_FILE``, one ``key[:scope]`` per line, ``#`` comments). Keys are compared in constant
time against every configured key and are never logged or echoed.

Secure by default: without keys, a server bound to a non-loopback address refuses admin writes (403)
unless the operator opted in with ``TRUSTSERVE_ALLOW_UNAUTHENTICATED=true``.
"""

from __future__ import annotations

import hmac
import ipaddress
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


def is_loopback_host(host: str) -> bool:
    """True for a bind address only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


class ApiKeyAuth:
    """Checks the ``Authorization: Bearer <key>`` or ``X-API-Key`` header against configured keys.

    ``admin_without_keys=False`` (a public bind without keys and without the opt-in) refuses the admin
    scope while no key is configured; the read scope stays open."""

    def __init__(
        self, inline: str | None = None, keys_file: Path | None = None, *, admin_without_keys: bool = True
    ) -> None:
        keys: list[_Key] = []
        if inline:
            keys += _parse_entries(inline.split(","), "TRUSTSERVE_API_KEYS")
        if keys_file is not None:
            keys += _parse_entries(Path(keys_file).read_text().splitlines(), "TRUSTSERVE_API_KEYS_FILE")
        self._keys = keys
        self.admin_without_keys = admin_without_keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def admin_locked(self) -> bool:
        """No keys and admin writes refused (public bind without the opt-in)."""
        return not self._keys and not self.admin_without_keys

    def check(self, request: Request, scope: str) -> None:
        if not self._keys:
            if scope == "admin" and not self.admin_without_keys:
                raise APIError(
                    403,
                    "admin_writes_disabled",
                    "this server listens on a non-loopback address without API keys, so it refuses "
                    "changes: set TRUSTSERVE_API_KEYS (or TRUSTSERVE_ALLOW_UNAUTHENTICATED=true)",
                )
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
