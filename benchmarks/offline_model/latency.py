"""Load time and single-image latency of the embedded offline model (preset ``offline-conse``) on CPU.

Prints: cold load (class-name embeddings computed, empty cache dir), warm load (embeddings read from the
disk cache), and the median / p90 latency of ``preprocess + encode_images`` for one skimage photo, and of
``encode_texts`` for one prompt. ``python benchmarks/offline_model/latency.py --threads 1 --repeats 30``
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from skimage import data

from app.vlm.loading import load_preset


def timed_load(preset_name: str, cache_dir: str, runtime: str) -> tuple[float, object]:
    start = time.perf_counter()
    loaded = load_preset(preset_name, device="cpu", runtime=runtime, export_cache_dir=cache_dir)
    return time.perf_counter() - start, loaded.backend


def percentiles(samples: list[float]) -> str:
    ms = 1000 * np.asarray(samples)
    return f"median {np.median(ms):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms (n={len(ms)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="offline-conse")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--runtime", default="torch", help="torch | onnxruntime | openvino | auto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache_dir:
        cold, _ = timed_load(args.preset, cache_dir, args.runtime)
        warm, backend = timed_load(args.preset, cache_dir, args.runtime)
    print(f"load: cold {cold:.2f} s (exports, embeds 1000 ImageNet class texts), warm {warm:.2f} s (cache)")
    photo = Image.fromarray(data.chelsea())
    image_times, text_times = [], []
    for _ in range(args.repeats + 2):
        start = time.perf_counter()
        backend.encode_images(backend.preprocess(photo)[None])
        image_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        backend.encode_texts(["a photo of a cat."])
        text_times.append(time.perf_counter() - start)
    print(f"one image (preprocess + encode_images), {args.threads} thread(s): {percentiles(image_times[2:])}")
    print(f"one prompt (encode_texts), {args.threads} thread(s): {percentiles(text_times[2:])}")


if __name__ == "__main__":
    main()
