"""Give freed heap memory back to the operating system.

glibc keeps memory freed by a thread in that thread's arena, and raises its mmap threshold after large
frees, so the buffers of one decoded 40-megapixel image can stay resident long after it is gone
(measured: 3 such images left +174 MB resident on 2 threads; after ``malloc_trim(0)``, +4 MB).
``release_freed_memory`` calls ``malloc_trim(0)`` where glibc provides it, and does nothing elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return getattr(libc, "malloc_trim", None)
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Return free heap pages of every arena to the OS (glibc ``malloc_trim(0)``); False if unavailable."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True
