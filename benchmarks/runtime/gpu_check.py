"""The prepared device check (issue 13, item 3): on a CUDA machine, time the image tower of a preset on
torch fp16 (eager), torch fp16 + torch.compile, and ONNX Runtime's CUDA / TensorRT provider when the
installed onnxruntime has it; then let ``auto`` choose. One short script, one JSON line per measurement.

    python -m benchmarks.runtime.gpu_check --preset random-vit-b-32 --batch 64 256

Not run in this project yet (no GPU was lent); CPU machines print that CUDA is absent and exit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from app.runtime.types import UnsupportedSettingError
from app.vlm.loading import load_preset
from app.vlm.preprocessing import probe_images


def time_images(backend, pixels: np.ndarray, repeats: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        backend.encode_images(pixels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend.encode_images(pixels)  # returns host arrays: includes the device->host copy
        times.append(time.perf_counter() - started)
    return len(pixels) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="random-vit-b-32")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "trustserve-gpu-export"
    )
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"cuda": False, "note": "no CUDA device: nothing to measure"}))
        return
    configs = [("torch", False), ("torch", True), ("onnxruntime", False), ("auto", False)]
    reference = None
    for runtime, compiled in configs:
        try:
            loaded = load_preset(
                args.preset,
                device="cuda",
                runtime=runtime,
                torch_compile=compiled,
                export_cache_dir=args.cache_dir,
            )
        except UnsupportedSettingError as exc:
            print(json.dumps({"runtime": runtime, "compile": compiled, "skipped": str(exc)}))
            continue
        backend = loaded.backend
        for batch in args.batch:
            images = probe_images(batch)
            pixels = np.stack([backend.preprocess(im) for im in images])
            per_s = time_images(backend, pixels, args.repeats)
            emb = backend.encode_images(pixels[:8]).embeddings
            if reference is None:
                reference = emb
            cos = float((emb * reference).sum(1).min())
            print(
                json.dumps(
                    {
                        "device": torch.cuda.get_device_name(),
                        "runtime": runtime,
                        "compile": compiled,
                        "chosen": {t: f"{r.runtime}/{r.dtype}" for t, r in loaded.towers.items()},
                        "batch": batch,
                        "images_per_s": round(per_s, 1),
                        "min_cosine_vs_torch_fp16": round(cos, 6),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
