"""Importing this module registers every backend and auxiliary encoder (one import line each)."""

from app.vlm import (
    aux,  # noqa: F401
    backends,  # noqa: F401
)
