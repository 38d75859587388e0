"""A RuntimeContext for tests: one runtime, a cache folder, CPU."""

from __future__ import annotations

from pathlib import Path

from app.runtime.cache import ExportCache
from app.runtime.towers import RuntimeContext
from app.runtime.types import RuntimeRequest

EXPORTED_RUNTIMES = ("onnxruntime", "openvino")
ALL_RUNTIMES = ("torch", *EXPORTED_RUNTIMES)


def make_context(
    cache_dir: Path, runtime: str = "torch", model: str = "test", **request: object
) -> RuntimeContext:
    """``runtime`` on the CPU with its export cache in ``cache_dir``."""
    return RuntimeContext(
        RuntimeRequest(runtime=runtime, device="cpu", **request),  # type: ignore[arg-type]
        ExportCache(cache_dir),
        model,
    )
