"""Bare forward per runtime x precision, interleaved in one process (issue 13).

For each preset: every (runtime, precision) the machine can run is loaded through the runtime layer
(export cache in ``--cache-dir``), then the image tower (batch of ``--batch`` preprocessed photos) and the
text tower (``--batch`` prompts) are timed round-robin, ``--rounds`` rounds, so every configuration sees the
same machine load. Parity is measured on the same batch against torch fp32: max |Δ| of the joint-space
embeddings and top-1 agreement of zero-shot logits over 10 labels.

    python -m benchmarks.runtime.bare_forward --presets offline-conse random-vit-b-32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from app.runtime.machine import cpu_supports_bf16
from app.runtime.types import UnsupportedSettingError
from app.vlm.loading import LoadedModels, load_preset
from benchmarks.runtime.calibration_images import write_calibration_images

CONFIGS = [
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
]
PHOTOS = ("coffee", "chelsea", "rocket", "astronaut", "cat", "camera", "horse", "immunohistochemistry")
LABELS = [
    "espresso",
    "a cat",
    "a rocket",
    "an astronaut",
    "a camera",
    "a horse",
    "cells",
    "a dog",
    "a car",
    "a tree",
]


def image_executor(models: LoadedModels):  # type: ignore[no-untyped-def]
    backend = models.backend
    return getattr(backend, "image_tower", None) or backend._image  # type: ignore[attr-defined]


def text_call(models: LoadedModels, prompts: list[str]):  # type: ignore[no-untyped-def]
    backend = models.backend
    if hasattr(backend, "text_encoder"):
        tower, tokens = backend.text_encoder.tower, backend.text_encoder.tokenizer(prompts)
    else:
        tower, tokens = backend._text, backend._tokenizer(prompts)  # type: ignore[attr-defined]
    return lambda: tower.run(tokens)


def photos(batch: int) -> list[Image.Image]:
    out = []
    for i in range(batch):
        array = getattr(data, PHOTOS[i % len(PHOTOS)])()
        out.append(Image.fromarray(array).convert("RGB"))
    return out


def timed(fn, rounds_out: list[float]) -> None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    rounds_out.append(time.perf_counter() - started)


def bench_preset(preset: str, args: argparse.Namespace, calibration: Path) -> list[dict[str, object]]:
    loaded: dict[tuple[str, str], LoadedModels] = {}
    load_seconds: dict[tuple[str, str], float] = {}
    for runtime, precision in CONFIGS:
        if precision == "bf16" and not cpu_supports_bf16():
            continue
        started = time.perf_counter()
        try:
            loaded[(runtime, precision)] = load_preset(
                preset,
                device="cpu",
                runtime=runtime,
                precision=precision,
                runtime_threads=args.threads,
                export_cache_dir=args.cache_dir,
                int8_calibration_dir=calibration,
                log_json=False,
            )
        except UnsupportedSettingError as exc:
            print(f"{preset} {runtime} {precision}: skipped ({exc})")
            continue
        load_seconds[(runtime, precision)] = time.perf_counter() - started
        print(
            f"{preset} {runtime} {precision}: loaded in {load_seconds[(runtime, precision)]:.1f} s",
            flush=True,
        )
    reference = loaded[("torch", "fp32")]
    images = photos(args.batch)
    pixels = np.stack([reference.backend.preprocess(im) for im in images])
    prompts = [f"a photo of {LABELS[i % len(LABELS)]}." for i in range(args.batch)]
    ref_emb = reference.backend.encode_images(pixels).embeddings
    labels_emb = reference.backend.encode_texts([f"a photo of {label}." for label in LABELS])
    ref_top1 = (ref_emb @ labels_emb.T).argmax(1)
    image_times: dict[tuple[str, str], list[float]] = {k: [] for k in loaded}
    text_times: dict[tuple[str, str], list[float]] = {k: [] for k in loaded}
    calls = {k: (image_executor(m), text_call(m, prompts)) for k, m in loaded.items()}
    for image, text in calls.values():  # warm-up
        image.run({"pixels": pixels})
        text()
    for _ in range(args.rounds):
        for k, (image, text) in calls.items():
            timed(lambda image=image: image.run({"pixels": pixels}), image_times[k])
            timed(text, text_times[k])
    rows = []
    torch_image = statistics.median(image_times[("torch", "fp32")])
    for k, models in loaded.items():
        emb = models.backend.encode_images(pixels).embeddings
        top1 = (emb @ labels_emb.T).argmax(1)
        image_s, text_s = statistics.median(image_times[k]), statistics.median(text_times[k])
        rows.append(
            {
                "preset": preset,
                "runtime": k[0],
                "precision": k[1],
                "image_per_s": round(args.batch / image_s, 1),
                "speedup_vs_torch": round(torch_image / image_s, 2),
                "text_per_s": round(args.batch / text_s, 1),
                "max_abs_embedding_delta": float(np.abs(emb - ref_emb).max()),
                "top1_agreement": float((top1 == ref_top1).mean()),
                "load_s": round(load_seconds[k], 1),
                "cache": {t: r.cache for t, r in models.towers.items()},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["offline-conse", "random-vit-b-32"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "trustserve-bench-export"
    )
    parser.add_argument("--calibration-dir", type=Path, default=None, help="default: 300 Fashion-MNIST train")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bare_forward.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    calibration = args.calibration_dir or write_calibration_images(args.cache_dir / "calibration-fmnist")
    load_before = os.getloadavg()
    rows = [row for preset in args.presets for row in bench_preset(preset, args, calibration)]
    result = {"load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {load_before}, after {result['load_average_after']}")
    header = f"{'preset':<16} {'runtime':<12} {'prec':<5} {'img/s':>7} {'x torch':>8} {'text/s':>8}"
    print(f"{header} {'max|Δ|':>9} top1")
    for r in rows:
        print(
            f"{r['preset']:<16} {r['runtime']:<12} {r['precision']:<5} {r['image_per_s']:>7} "
            f"{r['speedup_vs_torch']:>8} {r['text_per_s']:>8} {r['max_abs_embedding_delta']:>9.2e} "
            f"{r['top1_agreement']:.2f}"
        )


if __name__ == "__main__":
    main()
