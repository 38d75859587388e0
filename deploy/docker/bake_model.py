"""Load one model preset at image build time so everything it downloads lands in the image's caches.

The Dockerfile's ``baked`` stage runs this for air-gapped sites: Hugging Face / open_clip / timm weights go
to ``HF_HOME`` / ``TORCH_HOME`` and the offline model's class-name embeddings to ``XDG_CACHE_HOME``, through
the very code path the server takes at start-up (``ClassificationEngine.load``). Other settings come from
the ``TRUSTSERVE_*`` environment (``TRUSTSERVE_MODELS_DIR`` says where the presets are).

Usage: ``python bake_model.py PRESET``
"""

from __future__ import annotations

import argparse
import os


def bake(model: str) -> str:
    """Build the preset's backend and auxiliary encoder on CPU once; returns a one-line summary."""
    from app.config import Settings
    from app.engine.engine import ClassificationEngine

    engine = ClassificationEngine.load(Settings(model=model, device="cpu", dtype="float32", warmup=False))
    caches = {name: os.environ.get(name, "(default)") for name in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME")}
    return (
        f"baked model {engine.model_id} (image space {engine.aux_encoder_id}) "
        f"in {engine.load_seconds:.1f} s; caches: {caches}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="preset name in TRUSTSERVE_MODELS_DIR")
    args = parser.parse_args(argv)
    print(bake(args.model), flush=True)


if __name__ == "__main__":
    main()
