"""A bounded load generator for a live server on loopback: ``concurrency`` clients send classify requests
until ``requests`` have been answered or ``max_seconds`` have passed, whichever comes first. It records
every status, the latency of accepted requests, and the server's resident memory along the way."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

from tests.reliability import images as img
from tests.reliability.conftest import rss_bytes

LABELS = ["espresso", "a cat", "a rocket", "a bicycle"]


@dataclass
class LoadResult:
    """What one load phase saw."""

    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    accepted_latency_s: list[float] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    rss_samples: list[int] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        if not self.accepted_latency_s:
            return float("nan")
        return float(np.percentile(self.accepted_latency_s, q) * 1000)

    @property
    def unexpected(self) -> dict[int, int]:
        """Answers other than 200 and a deliberate 429."""
        return {s: n for s, n in self.statuses.items() if s not in (200, 429)}

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else None,
            "statuses": dict(sorted(self.statuses.items())),
            "transport_errors": len(self.transport_errors),
            "p50_ms": round(self.percentile_ms(50), 1),
            "p99_ms": round(self.percentile_ms(99), 1),
            "max_ms": round(max(self.accepted_latency_s, default=float("nan")) * 1000, 1),
            "peak_rss_mb": round(max(self.rss_samples, default=0) / 2**20, 1),
        }


async def _run(
    url: str,
    *,
    requests: int,
    concurrency: int,
    images_per_request: int,
    max_seconds: float,
    api_key: str | None,
    pid: int | None,
) -> LoadResult:
    result = LoadResult()
    files_pool = [img.normal_png(seed) for seed in range(8)]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    sent = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            n = sent
            files = [
                ("image", (f"{i}.png", files_pool[(n + i) % len(files_pool)], "image/png"))
                for i in range(images_per_request)
            ]
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    f"{url}/v1/classify", files=files, data={"labels": json.dumps(LABELS)}, headers=headers
                )
            except httpx.HTTPError as exc:
                result.transport_errors.append(repr(exc))
                continue
            result.statuses[r.status_code] += 1
            if r.status_code == 200:
                result.accepted_latency_s.append(time.perf_counter() - t0)
            elif r.status_code == 429:
                await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 1.0) * 0.05)
            if pid is not None and n % 200 == 0:
                result.rss_samples.append(rss_bytes(pid))

    # idle connections expire on the client before uvicorn's 5 s keep-alive timeout closes them, so a
    # request is never sent on a connection the server is closing at that moment
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, w) for w in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.requests = sum(result.statuses.values()) + len(result.transport_errors)
    if pid is not None:
        result.rss_samples.append(rss_bytes(pid))
    return result


def run_load(
    url: str,
    *,
    requests: int,
    concurrency: int,
    images_per_request: int = 1,
    max_seconds: float = 60.0,
    api_key: str | None = None,
    pid: int | None = None,
) -> LoadResult:
    """Blocking wrapper; bounded by ``requests`` and ``max_seconds``; loopback only."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("load is generated against loopback only")
    return asyncio.run(
        _run(
            url,
            requests=requests,
            concurrency=concurrency,
            images_per_request=images_per_request,
            max_seconds=max_seconds,
            api_key=api_key,
            pid=pid,
        )
    )
