"""Server end-to-end per runtime, side by side in one run (issue 13), with the per-stage breakdown.

One server process per configuration (``torch``, ``auto``, ``auto:bf16``, ``openvino:fp32`` ...) is started
on loopback on the same export cache and kept up for the whole run; the load generator (the project's async
client, ``--clients`` concurrent clients, ``--images-per-request`` JPEG photos per request, the same photos
and labels for every server) then measures them round-robin, ``--rounds`` rounds, so every configuration
sees the same machine load. Between server rounds the bare forward of each configuration's image tower (the
runtime the server actually runs, at the server's mean batch size, same thread count) is timed in this
process: "server / bare" compares a server with the model it runs.

Per stage (from the server's own ``trustserve_stage_duration_seconds`` histograms and each answer's
``timing_ms``): multipart parse, decode, preprocess, queue wait, model (per image = batch time / batch
size), scoring; and CPU seconds per image of the server process (also per thread: event loop, pre-processing
pool, model thread, the runtime's native workers; names from ``py-spy dump``) and of the load generator.

    python -m benchmarks.serving.bench_runtimes --preset offline-conse --configs torch auto \
        --export-cache-dir /tmp/bench-export --json benchmarks/serving/results/runtimes-offline-conse.json

``--py-spy DIR`` also records each server during its first measured round (``py-spy record``, raw
collapsed stacks) and prints the top frames.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from app.client import AsyncTrustServeClient, TrustServeError  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut", "camera", "cat")
LABELS = ["espresso", "a cat", "a rocket", "an astronaut", "a camera", "a dog", "a car", "a tree"]
STAGES = ("decode", "preprocess", "queue_wait", "inference", "scoring")


def photo_jpegs(megapixels: float | None = None, quality: int = 90) -> list[bytes]:
    """scikit-image's photos as JPEGs; with ``megapixels`` resized (Lanczos) to about that many pixels
    (phone-camera sizes: 12 MP is 4000 × 3000)."""
    from skimage import data

    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        if megapixels:
            scale = (megapixels * 1e6 / (img.width * img.height)) ** 0.5
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def file_part(config: str) -> str:
    """A configuration as part of a file name (``auto@PYTHONPATH=/x`` -> ``auto@PYTHONPATH=-x``)."""
    return re.sub(r"[^A-Za-z0-9_.=@-]", "-", config)


def parse_config(text: str) -> tuple[str, str, dict[str, str]]:
    """``RUNTIME[:PRECISION][@VAR=VALUE,...]`` -> runtime, precision, extra server environment (e.g.
    ``auto@PYTHONPATH=/work/main``: a server running another checkout's code, for a before/after)."""
    head, _, extra = text.partition("@")
    runtime, _, precision = head.partition(":")
    env = dict(item.split("=", 1) for item in extra.split(",") if item)
    return runtime, precision or "fp32", env


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each thread of a process (``/proc/<pid>/task/<tid>/stat``)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def thread_groups(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name without its pool index (``model``, ``preprocess``, ``MainThread``
    = the event loop), from ``py-spy dump``; threads it does not list are the runtimes' own native worker
    threads. Empty when py-spy is not installed."""
    if shutil.which("py-spy") is None:
        return {}
    dump = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    groups = {}
    for line in dump.splitlines():
        match = re.match(r'Thread (\S+) \(\w+\): "([^"]+)"', line)
        if match:
            name = re.sub(r"_\d+$", "", match.group(2))
            groups[int(match.group(1), 0)] = "anyio" if name.startswith("AnyIO") else name
    return groups


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_totals(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of every stage histogram and of the batch-size histogram, from ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(text):
        if family.name not in ("trustserve_stage_duration_seconds", "trustserve_batch_size"):
            continue
        for sample in family.samples:
            if "multimodal" in sample.labels.get("model", ""):
                continue
            key = sample.labels.get("stage", "batch_size")
            if sample.name.endswith("_sum"):
                out[key][0] += sample.value
            elif sample.name.endswith("_count"):
                out[key][1] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


@dataclass
class Server:
    config: str
    live: LiveServer
    towers: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    threads: dict[int, str] = field(default_factory=dict)
    bare: list[float] = field(default_factory=list)


class LeanClient:
    """A minimal HTTP/1.1 keep-alive client for the load generator: the request bytes are built once (by
    httpx, so they are exactly what the project's client sends) and written as they are; the answer is read
    by its Content-Length and parsed with ``json``. It spends a fraction of the project client's CPU per
    request (httpx's request building and response handling), which matters when the load generator
    shares the cores with the server under test; every server of a run gets the same client."""

    def __init__(self, url: str) -> None:
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    @staticmethod
    def classify_request(url: str, images: list[bytes], labels: list[str]) -> bytes:
        """The raw bytes of the project client's multipart classify request."""
        request = httpx.Request(
            "POST",
            f"{url}/v1/classify",
            files=[("image", (f"image{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)],
            data={"top_k": "5", "labels": json.dumps(labels)},
        )
        body = request.read()
        head = (
            f"POST /v1/classify HTTP/1.1\r\nHost: {request.url.host}:{request.url.port}\r\n"
            f"Content-Type: {request.headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("latin-1") + body

    async def send(self, raw: bytes) -> tuple[int, Any]:
        """One request on an idle connection (or a new one): (status, parsed JSON answer)."""
        reader, writer = (
            self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        )
        writer.write(raw)
        status_line = await reader.readline()
        length, keep = 0, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                keep = False
        payload = json.loads(await reader.readexactly(length)) if length else None
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def closed_loop(
    url: str, images: list[bytes], clients: int, requests: int, per_request: int, client: str = "lean"
) -> dict[str, Any]:
    """``clients`` workers, each sending ``per_request`` photos per request until ``requests`` are done
    (``client``: ``lean`` = :class:`LeanClient`, ``project`` = the project's async client)."""
    latencies: list[float] = []
    timings: dict[str, float] = collections.defaultdict(float)
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    batches = [
        [images[(i * per_request + j) % len(images)] for j in range(per_request)] for i in range(len(images))
    ]
    lean = LeanClient(url)
    raw = [LeanClient.classify_request(url, batch, LABELS) for batch in batches]
    async with AsyncTrustServeClient(url, timeout=300) as ts:

        async def classify(i: int) -> Any:
            if client == "project":
                try:
                    return await ts.classify(batches[i % len(batches)], LABELS)
                except TrustServeError as exc:
                    errors[str(exc.status)] = errors.get(str(exc.status), 0) + 1
                    return None
            status, answer = await lean.send(raw[i % len(raw)])
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                return None
            return answer

        async def worker() -> None:
            for i in counter:
                t = time.perf_counter()
                answer = await classify(i)
                if answer is None:
                    continue
                latencies.append(time.perf_counter() - t)
                for k, v in answer["timing_ms"].items():
                    timings[k] += v

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    await lean.close()
    n = len(latencies)
    return {
        "images_per_s": n * per_request / elapsed,
        "elapsed_s": elapsed,
        "requests_ok": n,
        "errors": errors,
        "p50_ms": float(np.percentile(latencies, 50) * 1000) if n else None,
        "p99_ms": float(np.percentile(latencies, 99) * 1000) if n else None,
        "answer_timing_ms_per_request": {k: v / max(n, 1) for k, v in timings.items()},
    }


def measure_round(server: Server, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    pid = server.live.process.pid  # type: ignore[union-attr]
    if not server.threads:  # after the warm-up: the pools' threads exist
        server.threads = thread_groups(pid)
    before, cpu0, own0, load0, threads0 = (
        stage_totals(server.live.url),
        process_cpu_s(pid),
        own_cpu_s(),
        os.getloadavg(),
        thread_cpu_s(pid),
    )
    machine0 = machine_cpu()
    result = asyncio.run(
        closed_loop(
            server.live.url, images, args.clients, args.requests, args.images_per_request, args.client
        )
    )
    after, cpu1, own1, threads1 = (
        stage_totals(server.live.url),
        process_cpu_s(pid),
        own_cpu_s(),
        thread_cpu_s(pid),
    )
    machine1 = machine_cpu()
    n_images = result["requests_ok"] * args.images_per_request
    stages: dict[str, float] = {}
    for stage in STAGES:
        s = after.get(stage, (0.0, 0.0))[0] - before.get(stage, (0.0, 0.0))[0]
        stages[stage] = 1000 * s / max(n_images, 1)  # ms per image (inference: batch time / images)
    batches = after.get("batch_size", (0, 0))[1] - before.get("batch_size", (0, 0))[1]
    items = after.get("batch_size", (0, 0))[0] - before.get("batch_size", (0, 0))[0]
    stages["scoring"] *= args.images_per_request  # scoring is observed once per request
    per_thread: dict[str, float] = collections.defaultdict(float)
    for tid, seconds in threads1.items():
        group = server.threads.get(tid, "native (runtime workers)") if server.threads else "all"
        per_thread[group] += 1000 * (seconds - threads0.get(tid, 0.0)) / max(n_images, 1)
    result.update(
        stages_ms_per_image=stages,
        mean_batch_size=items / batches if batches else 0.0,
        server_cpu_ms_per_image=1000 * (cpu1 - cpu0) / max(n_images, 1),
        server_cpu_ms_per_image_by_thread=dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
        client_cpu_ms_per_image=1000 * (own1 - own0) / max(n_images, 1),
        server_cores=(cpu1 - cpu0) / result["elapsed_s"],
        machine_busy=(machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1.0),
        load_before=load0,
        load_after=os.getloadavg(),
    )
    return result


def bare_models(servers: list[Server], preset: str, cache: Path) -> dict[str, Any]:
    """The image tower each server runs, loaded here from the same export cache (explicit runtime)."""
    from app.vlm.loading import load_preset

    loaded: dict[tuple[str, str], Any] = {}
    out = {}
    for server in servers:
        image = server.towers.get("image", {})
        key = (image.get("runtime", "torch"), image.get("precision", "fp32"))
        if key not in loaded:
            loaded[key] = load_preset(
                preset, runtime=key[0], precision=key[1], export_cache_dir=cache, device="cpu"
            ).backend
        out[server.config] = loaded[key]
    return out


def bare_rate(backend: Any, pixels: np.ndarray, calls: int) -> float:
    backend.encode_images(pixels)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        backend.encode_images(pixels)
        times.append(time.perf_counter() - t)
    return len(pixels) / statistics.median(times)


def py_spy_top(raw: Path, top: int = 20) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """From py-spy's raw output (active samples only): the share of samples per thread pool, and the
    functions with the most samples at the top of the stack (self time) or below it (inclusive)."""
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or ";" not in stack:
            continue
        thread, *frames = stack.split(";")
        count = int(n)
        total += count
        threads[thread.split(":", 1)[-1].strip().rstrip("_0123456789")] += count
        names = [
            f.split(" (")[0] + " [" + f.rsplit("/", 1)[-1].split(":")[0].rstrip(")") + "]" for f in frames
        ]
        for name in set(names):
            inclusive[name] += count
        inclusive["SELF " + names[-1]] += count
    shares = {k: v / max(total, 1) for k, v in threads.most_common()}
    return shares, [(f, c / max(total, 1)) for f, c in inclusive.most_common(top)]


def raise_priority(pid: int | str, nice: int) -> None:
    """Set the niceness of ``pid``'s scheduling autogroup (Linux with ``sched_autogroup_enabled``: CPU time
    is shared between sessions first, so ``nice -n 19`` on other sessions' work does not make it yield to
    this benchmark; a negative autogroup niceness restores the intended priority). Needs CAP_SYS_NICE."""
    path = Path(f"/proc/{pid}/autogroup")
    if not Path("/proc/sys/kernel/sched_autogroup_enabled").exists() or not path.exists():
        return
    path.write_text(str(nice))


def server_env(config: str, preset: str, store: Path, cache: Path, **settings: str) -> dict[str, str]:
    """The environment of a benchmarked ``trustserve serve``: ``config``'s runtime, precision and extra
    variables (``parse_config``), the preset, its own store, the shared export cache, warnings-only logs,
    then ``settings`` (``TRUSTSERVE_`` + the upper-cased name)."""
    runtime, precision, extra = parse_config(config)
    return {
        "TRUSTSERVE_MODEL": preset,
        "TRUSTSERVE_STORE_DIR": str(store),
        "TRUSTSERVE_RUNTIME": runtime,
        "TRUSTSERVE_PRECISION": precision,
        "TRUSTSERVE_EXPORT_CACHE_DIR": str(cache),
        "TRUSTSERVE_LOG_LEVEL": "WARNING",
        **{f"TRUSTSERVE_{name.upper()}": value for name, value in settings.items()},
        **extra,
    }


def start(config: str, args: argparse.Namespace, cache: Path, tmp: Path) -> Server:
    env = server_env(
        config, args.preset, tmp / f"store-{config}", cache, max_queue_size="4096", log_json="false"
    )
    if args.max_batch:
        env["TRUSTSERVE_MAX_BATCH_SIZE"] = str(args.max_batch)
    log = tmp / f"server-{file_part(config)}.log"
    live = LiveServer(["trustserve", "serve"], env=env, log_path=log).start()
    if args.autogroup_nice is not None:
        raise_priority(live.process.pid, args.autogroup_nice)  # type: ignore[union-attr]
    live.wait_ready(timeout_s=1800)
    towers = httpx.get(f"{live.url}/v1/models").json()["models"][0]["runtime"]
    print(f"{config}: ready after {live.ready_after_s:.1f} s, towers {_towers(towers)}", flush=True)
    return Server(config, live, towers)


def _round_line(r: dict[str, Any]) -> str:
    stages = {k: round(v, 2) for k, v in r["stages_ms_per_image"].items()}
    threads = {k: round(v, 2) for k, v in r["server_cpu_ms_per_image_by_thread"].items() if v >= 0.01}
    return (
        f"{r['images_per_s']:.1f} img/s, batch {r['mean_batch_size']:.1f}, stages {stages}, server CPU "
        f"{r['server_cpu_ms_per_image']:.1f} ms/img ({r['server_cores']:.2f} cores; by thread {threads}), "
        f"client CPU {r['client_cpu_ms_per_image']:.2f} ms/img, machine busy {r['machine_busy']:.0%}, "
        f"load {r['load_after'][0]:.2f}"
    )


def _towers(towers: dict[str, Any]) -> str:
    return ", ".join(f"{t} {v['runtime']}/{v['precision']}" for t, v in towers.items())


def table(servers: list[Server], args: argparse.Namespace) -> str:
    base = next((s for s in servers if s.config == "torch"), None)
    base_rate = statistics.median(r["images_per_s"] for r in base.rounds) if base else float("nan")
    lines = [
        "| config | runs | server img/s (median, runs) | × torch server | bare forward img/s | server / bare "
        "| server / fastest bare | mean batch | p50 / p99 ms | parse | decode | preprocess | queue wait "
        "| model | scoring | server CPU | client CPU |",
        "|" + "---|" * 17,
    ]
    fastest = max((statistics.median(s.bare) for s in servers if s.bare), default=float("nan"))
    for s in servers:
        rate = statistics.median(r["images_per_s"] for r in s.rounds)
        bare = statistics.median(s.bare) if s.bare else float("nan")
        stage = {k: statistics.median(r["stages_ms_per_image"][k] for r in s.rounds) for k in STAGES}
        parse = statistics.median(
            r["answer_timing_ms_per_request"].get("parse", 0.0) / args.images_per_request for r in s.rounds
        )
        mid = sorted(s.rounds, key=lambda r: r["images_per_s"])[len(s.rounds) // 2]
        runs = ", ".join(f"{r['images_per_s']:.1f}" for r in s.rounds)
        lines.append(
            f"| {s.config} ({_towers(s.towers)}) | {len(s.rounds)} | {rate:.1f} "
            f"({runs}) "
            f"| {rate / base_rate:.2f}× | {bare:.1f} | {rate / bare:.2f} | {rate / fastest:.2f} | "
            f"{statistics.median(r['mean_batch_size'] for r in s.rounds):.1f} "
            f"| {mid['p50_ms']:.0f} / {mid['p99_ms']:.0f} | {parse:.2f} | {stage['decode']:.2f} "
            f"| {stage['preprocess']:.2f} | {stage['queue_wait']:.1f} | {stage['inference']:.2f} "
            f"| {stage['scoring']:.2f} "
            f"| {statistics.median(r['server_cpu_ms_per_image'] for r in s.rounds):.1f} "
            f"| {statistics.median(r['client_cpu_ms_per_image'] for r in s.rounds):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="offline-conse")
    parser.add_argument("--configs", nargs="+", default=["torch", "auto"], help="RUNTIME[:PRECISION]")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160, help="requests per server per round")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bare-calls", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=0, help="server MAX_BATCH_SIZE (0: the default)")
    parser.add_argument("--megapixels", type=float, default=None, help="resize the photos to this size")
    parser.add_argument("--export-cache-dir", type=Path, default=None, help="default: a fresh temporary one")
    parser.add_argument("--py-spy", type=Path, default=None, help="record each server in its first round")
    parser.add_argument("--py-spy-options", nargs="*", default=[], help="e.g. --gil")
    parser.add_argument(
        "--client",
        choices=("lean", "project"),
        default="lean",
        help="load generator: a raw keep-alive HTTP/1.1 client sending prebuilt requests (lean, default) or "
        "the project's httpx client (project); the same for every server of a run",
    )
    parser.add_argument(
        "--autogroup-nice",
        type=int,
        default=None,
        help="e.g. -19: run the servers and the load generator in scheduling autogroups of this niceness "
        "(Linux autogroups make other sessions' `nice -n 19` work compete as equals; see raise_priority)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.autogroup_nice is not None:
        try:
            if os.getsid(0) != os.getpid():
                os.setsid()  # an autogroup of its own, not the calling shell's
            raise_priority("self", args.autogroup_nice)
        except OSError:  # a process-group leader cannot start a session: run it under `setsid`
            print("load generator: autogroup unchanged (run under `setsid` to raise it)", flush=True)
    images = photo_jpegs(args.megapixels)
    print(f"load average before: {os.getloadavg()}; photos {[len(b) // 1024 for b in images]} KB", flush=True)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp_name:
        tmp = Path(tmp_name)
        cache = args.export_cache_dir or tmp / "export"
        servers: list[Server] = []
        try:
            for config in args.configs:  # one at a time: a first start may export (and measure, for auto)
                servers.append(start(config, args, cache, tmp))
            for s in servers:  # warm-up: connections, text cache, every batch shape the load produces
                asyncio.run(
                    closed_loop(
                        s.live.url,
                        images,
                        args.clients,
                        args.requests // 2,
                        args.images_per_request,
                        args.client,
                    )
                )
            backends = bare_models(servers, args.preset, cache)
            for rnd in range(args.rounds):
                for s in servers:
                    spy = None
                    if args.py_spy is not None and rnd == 0:
                        args.py_spy.mkdir(parents=True, exist_ok=True)
                        raw = args.py_spy / f"{args.preset}-{file_part(s.config)}.txt"
                        spy = subprocess.Popen(
                            [
                                "py-spy",
                                "record",
                                "--pid",
                                str(s.live.process.pid),
                                "--format",
                                "raw",  # type: ignore[union-attr]
                                "--output",
                                str(raw),
                                "--rate",
                                "200",
                                "--threads",
                                "--nonblocking",
                                *args.py_spy_options,
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    s.rounds.append(measure_round(s, images, args))
                    if spy is not None:
                        spy.send_signal(2)
                        spy.wait(60)
                    print(f"round {rnd} {s.config}: {_round_line(s.rounds[-1])}", flush=True)
                for s in servers:
                    batch = max(1, round(s.rounds[-1]["mean_batch_size"]))
                    from app.vlm.preprocessing import probe_images

                    backend = backends[s.config]
                    pixels = np.stack([backend.preprocess(im) for im in probe_images(batch)])
                    s.bare.append(bare_rate(backend, pixels, args.bare_calls))
                    print(f"round {rnd} bare {s.config} (batch {batch}): {s.bare[-1]:.1f} img/s", flush=True)
        finally:
            for s in servers:
                s.live.stop()
            if args.export_cache_dir is None:
                shutil.rmtree(cache, ignore_errors=True)
    results["servers"] = {
        s.config: {
            "towers": s.towers,
            "rounds": s.rounds,
            "bare_images_per_s": s.bare,
            "ready_s": s.live.ready_after_s,
        }
        for s in servers
    }
    results["load_after"] = os.getloadavg()
    print(table(servers, args))
    print(f"load average after: {results['load_after']} on {os.cpu_count()} CPUs")
    if args.py_spy is not None:
        for s in servers:
            raw = args.py_spy / f"{args.preset}-{file_part(s.config)}.txt"
            if raw.exists():
                shares, frames = py_spy_top(raw)
                per_thread = {k: round(v, 3) for k, v in shares.items()}
                print(f"\npy-spy, {s.config}: active samples per thread: {per_thread}")
                for frame, share in frames:
                    print(f"  {share:6.1%}  {frame}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
