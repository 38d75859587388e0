"""Image-encoder latency of one VLM preset: the bare ``preprocess`` + ``encode_images`` path, no HTTP.

  python benchmarks/backends/image_latency.py --preset random-vit-b-32 --batch-sizes 1 32

For each batch size: warm-up, then ``--repeats`` timed forwards of the same preprocessed batch; prints the
median and p90 wall time per batch and images/s (from the median). Preprocessing (PIL -> tensor) is timed
separately per image. Random weights give valid timings, not valid accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from app.vlm.loading import load_preset  # noqa: E402


def photos(n: int) -> list[Image.Image]:
    """``n`` real photos (scikit-image samples, cycled) so preprocessing does real resize work."""
    from skimage import data

    names = ("coffee", "chelsea", "rocket", "astronaut")
    base = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names]
    return [base[i % len(base)] for i in range(n)]


def time_batches(backend, pixels: np.ndarray, repeats: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """(wall seconds, process CPU seconds) per ``encode_images`` call, after one warm-up call.

    CPU seconds divided by the thread count approximate the wall time on an otherwise idle machine; on a
    shared box they are the more stable number (wall time includes waiting for other processes).
    """
    backend.encode_images(pixels)
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        backend.encode_images(pixels)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="random-vit-b-32")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="torch", help="torch | onnxruntime | openvino | auto")
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 | int8")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_preset(args.preset, device=args.device, runtime=args.runtime, precision=args.precision)
    backend = loaded.backend
    images = photos(max(args.batch_sizes))

    start = time.perf_counter()
    tensors = [backend.preprocess(image) for image in images]
    preprocess_ms = 1000 * (time.perf_counter() - start) / len(images)

    results: dict[str, object] = {
        "preset": args.preset,
        "backend": backend.name,
        "device": loaded.device,
        "towers": {t: r.as_dict() for t, r in loaded.towers.items()},
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "preprocess_ms_per_image": round(preprocess_ms, 2),
        "batches": [],
    }
    for batch_size in args.batch_sizes:
        pixels = np.stack(tensors[:batch_size])
        wall, cpu = time_batches(backend, pixels, args.repeats)
        median, median_cpu = statistics.median(wall), statistics.median(cpu)
        results["batches"].append(  # type: ignore[union-attr]
            {
                "batch_size": batch_size,
                "median_ms": round(1000 * median, 1),
                "p90_ms": round(1000 * float(np.percentile(wall, 90)), 1),
                "images_per_s": round(batch_size / median, 1),
                "median_cpu_ms": round(1000 * median_cpu, 1),
                "images_per_cpu_s": round(batch_size / median_cpu, 1),
                "repeats": args.repeats,
            }
        )
    results["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
