"""Serving benchmarks, each a ratio measured in one run on one machine.

  python benchmarks/serving/bench_serving.py --preset random-vit-b-32 --out benchmarks/serving/results

1. end-to-end throughput (HTTP, JPEG photos, --clients concurrent clients) vs the bare model forward at the
   server's observed mean batch size (the physical limit);
2. dynamic batching (max batch --max-batch) vs one-request-at-a-time serving (max batch 1);
3. TrustVLM scoring overhead vs MSP-only, image space = the VLM's own tower (a label set with prototypes
   vs ad-hoc labels, same images, same server);
4. latency p50/p95/p99 at a fixed request rate below saturation (open loop), and time-to-429 above it.

The load generator runs on the same machine as the server (it costs CPU too; reported, not hidden).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from app.client import AsyncTrustServeClient, TrustServeError  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut", "camera", "cat")
LABELS = ["espresso", "a cat", "a rocket", "an astronaut", "a camera", "a dog", "a car", "a tree"]


def photo_jpegs() -> list[bytes]:
    from skimage import data

    out = []
    for name in PHOTOS:
        arr = getattr(data, name)()
        img = Image.fromarray(arr).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def start_server(preset: str, max_batch: int, store: Path, log: Path, **env: object) -> LiveServer:
    settings = {
        "TRUSTSERVE_MODEL": preset,
        "TRUSTSERVE_STORE_DIR": str(store),
        "TRUSTSERVE_MAX_BATCH_SIZE": str(max_batch),
        "TRUSTSERVE_MAX_WAIT_MS": "10",
        "TRUSTSERVE_MAX_QUEUE_SIZE": "4096",
        "TRUSTSERVE_LOG_LEVEL": "WARNING",
        **{f"TRUSTSERVE_{k.upper()}": str(v) for k, v in env.items()},
    }
    server = LiveServer(["trustserve", "serve"], env=settings, log_path=log)
    return server.start().wait_ready(timeout_s=600)


async def closed_loop(url: str, images: list[bytes], clients: int, requests: int, **kw: object) -> dict:
    """``clients`` workers each sending one image per request until ``requests`` are done."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    async with AsyncTrustServeClient(url, timeout=120) as ts:

        async def worker() -> None:
            for i in counter:
                t = time.perf_counter()
                try:
                    await ts.classify(
                        [images[i % len(images)]], kw.get("labels"), label_set=kw.get("label_set")
                    )
                    latencies.append(time.perf_counter() - t)
                except TrustServeError as exc:
                    errors[str(exc.status)] = errors.get(str(exc.status), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "images_per_s": len(latencies) / elapsed,
        "ok": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def open_loop(url: str, images: list[bytes], rate: float, seconds: float) -> dict:
    """Poisson arrivals at ``rate`` requests/s for ``seconds`` (latency below saturation)."""
    rng = np.random.default_rng(0)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with AsyncTrustServeClient(url, timeout=120) as ts:

        async def one(i: int) -> None:
            t = time.perf_counter()
            try:
                await ts.classify([images[i % len(images)]], LABELS)
                latencies.append(time.perf_counter() - t)
            except TrustServeError as exc:
                errors[str(exc.status)] = errors.get(str(exc.status), 0) + 1

        tasks = []
        t_end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < t_end:
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(rng.exponential(1.0 / rate))
        await asyncio.gather(*tasks)
    return {
        "rate_rps": rate,
        "sent": i,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


async def time_to_429(url: str, image: bytes, burst: int, probes: int = 40) -> dict:
    """Two views of overload on a server with a tiny queue.
    burst: ``burst`` simultaneous requests (connection set-up and client-side encoding included);
    probe: while 16 closed-loop clients keep the pipeline full, single requests on a warm connection —
    the server-side time to refuse."""
    files = {"image": ("p.jpg", image, "image/jpeg")}
    data = {"labels": json.dumps(LABELS)}
    refused: list[float] = []
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=burst)
    ) as http:

        async def one() -> None:
            t = time.perf_counter()
            r = await http.post("/v1/classify", files=files, data=data)
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if r.status_code == 429:
                assert "retry-after" in r.headers
                refused.append(time.perf_counter() - t)

        await asyncio.gather(*(one() for _ in range(burst)))
    out: dict[str, object] = {
        "burst": burst,
        "burst_statuses": statuses,
        "burst_429_p50_ms": percentile(refused, 50) * 1000,
        "burst_429_p99_ms": percentile(refused, 99) * 1000,
    }
    stop = asyncio.Event()
    probe_times: list[float] = []
    probe_statuses: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=120) as load, httpx.AsyncClient(base_url=url) as probe:

        async def saturate() -> None:
            while not stop.is_set():
                await load.post("/v1/classify", files=files, data=data)

        workers = [asyncio.create_task(saturate()) for _ in range(16)]
        await asyncio.sleep(2.0)
        await probe.get("/livez")  # open the probe connection
        for _ in range(probes):
            t = time.perf_counter()
            r = await probe.post("/v1/classify", files=files, data=data)
            probe_statuses[str(r.status_code)] = probe_statuses.get(str(r.status_code), 0) + 1
            if r.status_code == 429:
                probe_times.append(time.perf_counter() - t)
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*workers)
    out.update(
        {
            "probe_statuses": probe_statuses,
            "probe_429_p50_ms": percentile(probe_times, 50) * 1000,
            "probe_429_p99_ms": percentile(probe_times, 99) * 1000,
        }
    )
    return out


def bare_forward(preset_name: str, images: list[bytes], batch: int, repeats: int) -> dict:
    """The model alone: preprocessed batch -> encode_images, no HTTP, no decoding, no scoring."""
    from app.vlm.loading import load_preset

    backend = load_preset(preset_name, runtime=os.environ.get("TRUSTSERVE_RUNTIME", "auto")).backend
    pils = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    pixels = np.stack([backend.preprocess(pils[i % len(pils)]) for i in range(batch)])
    backend.encode_images(pixels)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        backend.encode_images(pixels)
        times.append(time.perf_counter() - t)
    best = statistics.median(times)
    return {"batch": batch, "median_s": best, "images_per_s": batch / best}


async def make_label_set(url: str, images: list[bytes]) -> str:
    async with AsyncTrustServeClient(url, timeout=300) as ts:
        await ts.create_label_set("bench", LABELS)
        for label, img in zip(LABELS, images * 2, strict=False):
            await ts.add_support_images("bench", label, [img, img])
    return "bench"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="random-vit-b-32")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--rate-fraction", type=float, default=0.5, help="open-loop rate / measured capacity")
    parser.add_argument("--open-loop-seconds", type=float, default=15)
    parser.add_argument("--repeats", type=int, default=3, help="measured passes per configuration (median)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/serving/results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = photo_jpegs()
    results: dict[str, object] = {
        "preset": args.preset,
        "clients": args.clients,
        "requests": args.requests,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # 1 + 3 + 4a: the batched server
        server = start_server(args.preset, args.max_batch, tmp_path / "store", tmp_path / "batched.log")
        try:
            # warm every batch shape the load will produce, then measure MSP-only and TrustVLM interleaved
            asyncio.run(closed_loop(server.url, images, args.clients, args.requests, labels=LABELS))
            label_set = asyncio.run(make_label_set(server.url, images))
            asyncio.run(
                closed_loop(server.url, images, args.clients, args.requests // 2, label_set=label_set)
            )
            runs: dict[str, list[dict]] = {"msp_only": [], "trustvlm": []}
            for _ in range(args.repeats):
                runs["msp_only"].append(
                    asyncio.run(closed_loop(server.url, images, args.clients, args.requests, labels=LABELS))
                )
                runs["trustvlm"].append(
                    asyncio.run(
                        closed_loop(server.url, images, args.clients, args.requests, label_set=label_set)
                    )
                )
            stats = httpx.get(f"{server.url}/v1/models").json()["models"][0]["batching"]
            med = {k: statistics.median(r["images_per_s"] for r in v) for k, v in runs.items()}
            batched = {
                **runs["msp_only"][-1],
                "images_per_s": med["msp_only"],
                "runs_images_per_s": [r["images_per_s"] for r in runs["msp_only"]],
                "mean_batch_size": stats["mean_batch_size"],
            }
            results["batched"] = batched
            results["trustvlm_vs_msp"] = {
                "msp_only_images_per_s": [r["images_per_s"] for r in runs["msp_only"]],
                "trustvlm_images_per_s": [r["images_per_s"] for r in runs["trustvlm"]],
                "overhead": med["msp_only"] / med["trustvlm"] - 1,
            }
            print("batched server:", batched, flush=True)
            print("TrustVLM vs MSP:", results["trustvlm_vs_msp"], flush=True)
            rate = max(1.0, args.rate_fraction * batched["images_per_s"])
            results["open_loop"] = asyncio.run(open_loop(server.url, images, rate, args.open_loop_seconds))
            print("open loop:", results["open_loop"], flush=True)
        finally:
            server.stop()
        # 2: one request at a time
        single = start_server(args.preset, 1, tmp_path / "store1", tmp_path / "single.log")
        try:
            asyncio.run(closed_loop(single.url, images, args.clients, args.requests // 2, labels=LABELS))
            unbatched = [
                asyncio.run(closed_loop(single.url, images, args.clients, args.requests, labels=LABELS))
                for _ in range(args.repeats)
            ]
            results["unbatched"] = {
                **unbatched[-1],
                "images_per_s": statistics.median(r["images_per_s"] for r in unbatched),
                "runs_images_per_s": [r["images_per_s"] for r in unbatched],
            }
            print("unbatched server:", results["unbatched"], flush=True)
        finally:
            single.stop()
        # 4b: overload
        small = start_server(
            args.preset, args.max_batch, tmp_path / "store2", tmp_path / "small.log", max_queue_size=8
        )
        try:
            results["overload"] = asyncio.run(time_to_429(small.url, images[0], burst=128))
            print("overload:", results["overload"], flush=True)
        finally:
            small.stop()
    # 1: the bare forward at the server's mean batch size
    batch = max(1, round(float(batched["mean_batch_size"])))
    results["bare_forward"] = bare_forward(args.preset, images, batch, repeats=20)
    results["server_vs_bare"] = batched["images_per_s"] / results["bare_forward"]["images_per_s"]
    results["batched_vs_unbatched"] = batched["images_per_s"] / results["unbatched"]["images_per_s"]
    print(json.dumps(results, indent=2))
    (args.out / f"{args.preset}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
