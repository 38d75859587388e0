"""Export the multimodal checkpoints the server would load into the export cache, at image build time.

``trustserve models export PRESET`` covers a VLM preset's towers; this does the same for every multimodal
checkpoint folder under ``TRUSTSERVE_MODELS_DIR/multimodal`` (and ``TRUSTSERVE_MULTIMODAL_DIR``), through
the server's own loader (``MultimodalService.from_dirs``) on the configured runtime
(``TRUSTSERVE_RUNTIME``, ``TRUSTSERVE_PRECISION``, ``TRUSTSERVE_EXPORT_CACHE_DIR``). The Dockerfile's
``export`` stage runs it where torch is installed, so the slim image finds each checkpoint's fused
classifier exported and parity-checked. A checkpoint that does not load fails the build (exit status 1).

Usage: ``python export_multimodal.py``
"""

from __future__ import annotations

import argparse
import logging
import sys


def export_multimodal() -> tuple[list[str], int]:
    """The names of the checkpoints loaded (and so exported), and how many checkpoint folders were found."""
    from app.api.app import multimodal_dirs
    from app.config import Settings
    from app.multimodal.service import MultimodalService, find_checkpoint_dirs
    from app.runtime.cache import ExportCache
    from app.vlm.loading import runtime_request

    settings = Settings(device="cpu")
    dirs = multimodal_dirs(settings)
    found = sum(len(find_checkpoint_dirs(root)) for root in dirs)
    request = runtime_request(settings)
    service = MultimodalService.from_dirs(dirs, request, ExportCache(settings.export_cache_dir))
    for name in service.names:
        print(f"multimodal {name}: exported for {request.runtime} {request.precision}", flush=True)
    print(f"export cache: {settings.export_cache_dir}", flush=True)
    return service.names, found


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    loaded, found = export_multimodal()
    if len(loaded) != found:  # from_dirs logged why (ERROR "skipping broken multimodal checkpoint ...")
        print(f"only {len(loaded)} of {found} multimodal checkpoint folders loaded", file=sys.stderr)
        raise SystemExit(1)
    print(f"{found} multimodal checkpoint(s) exported", flush=True)


if __name__ == "__main__":
    main()
