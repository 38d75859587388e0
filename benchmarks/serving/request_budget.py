"""What one large request costs the model thread, per runtime and max batch size (issue 13, re-measuring
issue 12's defaults on the runtime ``auto`` picks).

For each configuration a server is started (``RUNTIME[:PRECISION][@VAR=VALUE,...]`` as in
``bench_runtimes``, times each ``--batch-sizes``) and, while a probe client classifies a small image and
calls ``/readyz`` every 0.2 s (``tests/reliability/budget.py``), sends:

- ``images``: one classify with ``--images`` JPEG photos (``MAX_IMAGES_PER_REQUEST`` is 64);
- ``prompts_N``: one ad-hoc classify whose labels × the preset's templates are N new prompts (rounded up to
  whole labels) of maximal label length (200 characters); the server's ``MAX_NEW_PROMPTS_PER_REQUEST`` is
  raised to match.

Reported per request: wall time, the model thread's busy seconds for it (the server's own ``inference`` /
``text_inference`` stage histograms, difference over the request; the probe's small batches are included),
the number of model calls and the longest one (upper bucket bound), peak RSS growth (VmHWM), and the
probe's worst latency.

    python -m benchmarks.serving.request_budget --preset offline-conse --configs torch auto \
        --batch-sizes 8 16 32 --export-cache-dir /tmp/bench-export --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.bench_runtimes import photo_jpegs, server_env  # noqa: E402
from tests.reliability.budget import MeasuredServer  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402


def model_stages(url: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts (upper bound -> count, +inf included as ``inf``) and ``sum`` of the
    ``inference`` and ``text_inference`` stages."""
    out: dict[str, dict[float, float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        if family.name != "trustserve_stage_duration_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if stage not in ("inference", "text_inference") or "multimodal" in sample.labels.get("model", ""):
                continue
            if sample.name.endswith("_bucket"):
                out[stage][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                out[stage][-1.0] = sample.value
    return out


def model_time(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]], stage: str
) -> dict:
    """Busy seconds, calls and the longest call's bucket bound between two scrapes."""
    b, a = before.get(stage, {}), after.get(stage, {})
    delta = {le: a.get(le, 0.0) - b.get(le, 0.0) for le in a}
    calls = delta.get(float("inf"), 0.0)
    longest = min((le for le, n in delta.items() if le >= 0 and n >= calls), default=float("nan"))
    return {"busy_s": round(delta.get(-1.0, 0.0), 3), "calls": int(calls), "longest_call_le_s": longest}


def images_request(images: list[bytes], count: int) -> Callable[[httpx.Client], Iterator[int]]:
    def run(client: httpx.Client) -> Iterator[int]:
        files = [("image", (f"{i}.jpg", images[i % len(images)], "image/jpeg")) for i in range(count)]
        yield client.post("/v1/classify", files=files, data={"labels": '["a cat", "a dog"]'}).status_code

    return run


def prompts_request(prompts: int, templates: int, tag: str) -> Callable[[httpx.Client], Iterator[int]]:
    labels = -(-prompts // templates)

    def run(client: httpx.Client) -> Iterator[int]:
        body_labels = [
            f"{tag}{i:05d} " + "long label words " * 11 + "x" * (7 - len(tag)) for i in range(labels)
        ]
        assert all(len(label) == 200 for label in body_labels)
        files = [("image", ("p.jpg", photo_jpegs()[0], "image/jpeg"))]
        yield client.post("/v1/classify", files=files, data={"labels": json.dumps(body_labels)}).status_code

    return run


def measure(server: MeasuredServer, name: str, run: Callable, stage: str) -> dict[str, Any]:
    before = model_stages(server.url)
    result = server.attack(name, run, timeout_s=600).row()
    after = model_stages(server.url)
    return {**result, **model_time(before, after, stage), "load": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="offline-conse")
    parser.add_argument("--configs", nargs="+", default=["torch", "auto"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--prompts", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--export-cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from app.vlm.presets import get_preset

    templates = len(get_preset(args.preset).templates)
    max_prompts = -(-max(args.prompts) // templates) * templates  # whole labels: ceil(N / templates) labels
    images = photo_jpegs()
    rows: list[dict[str, Any]] = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="request-budget-") as tmp_name:
        tmp = Path(tmp_name)
        cache = args.export_cache_dir or tmp / "export"
        for config in args.configs:
            for batch in args.batch_sizes:
                env = server_env(
                    config,
                    args.preset,
                    tmp / f"store-{len(rows)}",
                    cache,
                    max_batch_size=str(batch),
                    max_new_prompts_per_request=str(max_prompts),
                )
                live = LiveServer(["trustserve", "serve"], env=env, log_path=tmp / "server.log")
                server = MeasuredServer(live, headroom_bytes=8 * 2**30).start(timeout_s=1800)
                try:
                    towers = httpx.get(f"{server.url}/v1/models").json()["models"][0]["runtime"]
                    chosen = ", ".join(f"{t} {v['runtime']}/{v['precision']}" for t, v in towers.items())
                    for rep in range(args.repeats):
                        cases = [("images", images_request(images, args.images), "inference")]
                        cases += [
                            (
                                f"prompts_{n}",
                                prompts_request(n, templates, f"r{rep}b{batch}"),
                                "text_inference",
                            )
                            for n in args.prompts
                        ]
                        for name, run, stage in cases:
                            row = {"config": config, "towers": chosen, "max_batch": batch, "repeat": rep}
                            row.update(measure(server, name, run, stage))
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                finally:
                    server.stop()
    print("\n| config | max batch | request | status | wall s | model busy s | calls | longest call ≤ s "
          "| peak RSS +MB | probe worst s | load |")  # fmt: skip
    print("|" + "---|" * 11)
    for r in rows:
        cells = [f"{r['config']} ({r['towers']})", r["max_batch"], r["name"], r["statuses"], r["seconds"]]
        cells += [r["busy_s"], r["calls"], r["longest_call_le_s"], r["peak_growth_mb"], r["probe_max_s"]]
        print("| " + " | ".join(str(c) for c in [*cells, r["load"][0]]) + " |")
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
