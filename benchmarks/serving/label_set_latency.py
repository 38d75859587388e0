"""``/v1/classify`` latency through a label set, before and after label sets chose their image space
(issue 14), measured in one run on one machine.

Two servers of the same preset run side by side: ``before`` from another source tree (``--before``, e.g.
a checkout of main) and ``after`` from this one. Each gets the same label set (8 classes, the same support
photos); ``after`` gets it twice, once in the model's own image space and once in the independent one
(the preset's extra network: EfficientNet-Lite0 beside the offline Lite2), plus ad-hoc labels on both.
Requests are sequential, one JPEG each, and the states are interleaved round by round, so load on the
shared machine hits every state alike. Reports p50/p90 per state and the load averages.

    nice -n 19 python benchmarks/serving/label_set_latency.py --before /work/main --requests 80 \\
        --out benchmarks/serving/results/label_set_latency.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.serving.bench_serving import LABELS, photo_jpegs  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402


def start(tree: Path, preset: str, runtime: str, store: Path, log: Path) -> LiveServer:
    """``trustserve serve`` with ``tree`` first on the import path (its code, the shared environment)."""
    env = {
        "PYTHONPATH": str(tree),
        "TRUSTSERVE_MODEL": preset,
        "TRUSTSERVE_RUNTIME": runtime,
        "TRUSTSERVE_STORE_DIR": str(store),
        "TRUSTSERVE_LOG_LEVEL": "WARNING",
        "TRUSTSERVE_RUNTIME_THREADS": "1",
    }
    command = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
    return LiveServer(command, env=env, log_path=log, cwd=tree).start().wait_ready(timeout_s=900)


def make_label_set(url: str, label_set_id: str, images: list[bytes], **fields: object) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=600) as client:
        r = client.post("/v1/label-sets", json={"id": label_set_id, "labels": LABELS, **fields})
        r.raise_for_status()
        labels = [label for label in LABELS for _ in range(2)]
        photos = [images[i % len(images)] for i in range(len(labels))]
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
        client.post(
            f"/v1/label-sets/{label_set_id}/images", files=files, data={"labels": labels}
        ).raise_for_status()
        return client.get(f"/v1/label-sets/{label_set_id}").json()


def classify(client: httpx.Client, image: bytes, label_set: str | None) -> tuple[float, dict[str, Any]]:
    body: dict[str, Any] = {"images": [base64.b64encode(image).decode()]}
    body |= {"label_set": label_set} if label_set else {"labels": LABELS}
    started = time.perf_counter()
    r = client.post("/v1/classify", json=body)
    seconds = time.perf_counter() - started
    r.raise_for_status()
    return seconds, r.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=None, help="source tree of the baseline server")
    parser.add_argument("--preset", default="offline-conse")
    parser.add_argument("--runtime", default="onnxruntime", help="as TRUSTSERVE_RUNTIME, both servers")
    parser.add_argument("--requests", type=int, default=80, help="per state, after 5 warm-up requests")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    images = photo_jpegs()
    loads = {"start": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="label-set-latency-"))
    servers: dict[str, LiveServer] = {}
    states: list[tuple[str, str, str | None]] = []  # (state, server, label set)
    try:
        servers["after"] = start(REPO, args.preset, args.runtime, tmp / "after", tmp / "after.log")
        own = make_label_set(servers["after"].url, "own", images, image_space="own")
        states += [("after: ad-hoc labels", "after", None), ("after: label set, own space", "after", "own")]
        spaces = {"own": own.get("image_space_encoder")}
        try:
            indep = make_label_set(servers["after"].url, "indep", images, image_space="independent")
            spaces["independent"] = indep["image_space_encoder"]
            states.append(("after: label set, independent space", "after", "indep"))
        except httpx.HTTPStatusError as exc:
            print(f"no independent space on {args.preset}: {exc.response.text}")
        if args.before is not None:
            servers["before"] = start(args.before, args.preset, args.runtime, tmp / "before", tmp / "b.log")
            make_label_set(servers["before"].url, "own", images)
            states = [
                ("before: ad-hoc labels", "before", None),
                ("before: label set", "before", "own"),
                *states,
            ]
        clients = {name: httpx.Client(base_url=s.url, timeout=120) for name, s in servers.items()}
        seconds: dict[str, list[float]] = {state: [] for state, _, _ in states}
        answers: dict[str, dict[str, Any]] = {}
        for round_ in range(5 + args.requests):
            for state, server, label_set in states:
                took, answer = classify(clients[server], images[round_ % len(images)], label_set)
                if round_ >= 5:
                    seconds[state].append(took)
                answers[state] = answer["results"][0]["trust"]
        loads["end"] = os.getloadavg()
    finally:
        for server in servers.values():
            server.stop()
    result = {
        "preset": args.preset,
        "runtime": args.runtime,
        "requests_per_state": args.requests,
        "load_average": loads,
        "image_spaces": spaces,
        "states": {
            state: {
                "p50_ms": round(1000 * float(np.percentile(values, 50)), 1),
                "p90_ms": round(1000 * float(np.percentile(values, 90)), 1),
                "mean_ms": round(1000 * float(np.mean(values)), 1),
                "trust_image_space": answers[state]["image_space"],
            }
            for state, values in seconds.items()
        },
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
