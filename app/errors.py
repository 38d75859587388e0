"""Domain errors: what went wrong, in words a client can act on, with a stable machine ``code``.

The engine, label sets, multimodal models, trust, vlm and runtime layers raise these; nothing below
``app.api`` knows about HTTP. The API maps each kind to its status in ONE place
(``app.api.errors.STATUS_BY_KIND``); the command line prints the message. A subclass keeps its parent's
status, so a new error is one class with a default code.
"""

from __future__ import annotations

from typing import Any

SHOWN_CHARS = 40  # how much of a client's text an error message repeats
RETRY_AFTER_S = 5.0  # what a client is told to wait when the server is busy or not ready yet


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` for an error message: repr, cut to ``limit`` characters (no echo of large inputs)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} chars)"


class TrustserveError(Exception):
    """Base of every error a request can cause. ``code`` is stable and machine-readable; ``details`` is
    JSON-serialisable and optional."""

    code = "invalid_input"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidInput(TrustserveError):
    """Well-formed input the service cannot use (bad labels, unknown class, calibration impossible)."""


class MalformedInput(TrustserveError):
    """Input that cannot even be parsed (broken JSON, invalid base64, an empty file)."""

    code = "bad_request"


class NotFound(TrustserveError):
    """The named label set, class or model does not exist."""

    code = "not_found"


class Conflict(TrustserveError):
    """The request clashes with the current state (id exists, stale version, other model)."""

    code = "conflict"


class TooLarge(TrustserveError):
    """The input exceeds a size bound (pixels, samples) checked before the work starts."""

    code = "payload_too_large"


class UnsupportedMedia(TrustserveError):
    """A file in a format the service does not read."""

    code = "unsupported_media_type"


class Overloaded(TrustserveError):
    """The service is at capacity; retry after ``retry_after_s``."""

    code = "overloaded"

    def __init__(
        self, message: str, *, retry_after_s: float = RETRY_AFTER_S, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unavailable(TrustserveError):
    """Something the request needs is not available now (model loading, store down, timed out)."""

    code = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        retry_after_s: float | None = RETRY_AFTER_S,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after_s = retry_after_s


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""

    def __init__(self, feature: str, module: str, install: str) -> None:
        super().__init__(f"{feature} needs the Python package {module!r}: {install}", name=module)
        self.install = install


def require_module(module: str, *, feature: str, install: str) -> Any:
    """``importlib.import_module(module)``, or ``MissingDependencyError`` saying in one line what to
    install (``install``: the command, e.g. ``pip install 'animal-mnist==0.4'``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the package is there but one of ITS dependencies is missing: show that as it is
        raise MissingDependencyError(feature, module, install) from None
