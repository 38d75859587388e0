"""Importing this module registers every backend and auxiliary encoder (one import line each)."""

from app.vlm import backends  # noqa: F401
from app.vlm import aux  # noqa: F401
