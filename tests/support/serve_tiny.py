"""Run the real server (uvicorn, real create_app) on the tiny model in this process:
``python -m tests.support.serve_tiny --models-dir DIR --port N``; other settings from TRUSTSERVE_* env."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import uvicorn

from tests.support.tiny_model import TINY_PRESET, register_tiny_arch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    register_tiny_arch(args.models_dir)
    torch.manual_seed(0)  # the same random weights in every replica

    from app.api.app import create_app
    from app.cli import uvicorn_options
    from app.config import Settings
    from app.observability.logging import configure_logging

    settings = Settings(
        models_dir=args.models_dir,
        host=args.host,
        **({} if _env_has("MODEL") else {"model": TINY_PRESET}),
    )
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, **uvicorn_options(settings))


def _env_has(name: str) -> bool:
    import os

    return f"TRUSTSERVE_{name}" in os.environ


if __name__ == "__main__":
    main()
