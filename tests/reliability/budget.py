"""Measure what one hostile request costs a real server process: peak resident memory growth (VmHWM,
reset before each attack through /proc/<pid>/clear_refs), memory still held afterwards, wall time, and
whether another client is answered while the attack runs (a probe thread classifying a small image).

The server's address space is capped (``RLIMIT_AS``, set on the running process once it is ready: its
current virtual size plus a headroom), so an attack that would take tens of gigabytes makes the server
fail instead of exhausting the machine. The cap is relative because torch maps gigabytes of virtual
memory it never touches; the budget itself is checked on resident memory.
"""

from __future__ import annotations

import resource
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.reliability.hostile import small_png
from tests.support.live_server import LiveServer

MB = 2**20


def proc_status_bytes(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, VmSize), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for process {pid}")


@dataclass
class ProbeLog:
    """What the probe client saw: (seconds since start, status or error name, latency) per request."""

    records: list[tuple[float, str, float]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(1 for _, s, _ in self.records if s == "200")

    @property
    def failed(self) -> list[str]:
        return [s for _, s, _ in self.records if s != "200"]

    @property
    def max_latency_s(self) -> float:
        return max((lat for _, _, lat in self.records), default=0.0)


class Probe:
    """Another client: classify a small image among two cached labels, then /readyz, in a loop."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, period_s: float = 0.2) -> None:
        self.url = url
        self.headers = headers or {}
        self.period_s = period_s
        self.log = ProbeLog()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def _one(self, client: httpx.Client, readyz: bool) -> None:
        t0 = time.monotonic()
        try:
            if readyz:
                r = client.get("/readyz")
            else:
                r = client.post(
                    "/v1/classify",
                    files=[("image", ("p.png", small_png(), "image/png"))],
                    data={"labels": '["a cat", "a dog"]'},
                )
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        self.log.records.append((t0 - self._started, status, time.monotonic() - t0))

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as client:
            n = 0
            while not self._stop.is_set() or n < 2:  # at least one classify and one /readyz
                self._one(client, readyz=n % 2 == 1)
                n += 1
                self._stop.wait(self.period_s)

    def __enter__(self) -> Probe:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


@dataclass
class AttackResult:
    """One hostile request (or burst) against the server, measured."""

    name: str
    statuses: dict[str, int]
    seconds: float
    peak_growth_mb: float
    retained_mb: float
    probes_ok: int
    probes_failed: list[str]
    probe_max_s: float
    alive: bool
    detail: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


class MeasuredServer:
    """A started ``LiveServer`` whose memory is capped and measured per attack."""

    def __init__(
        self, server: LiveServer, headroom_bytes: int = 3 * 2**30, headers: dict[str, str] | None = None
    ):
        self.server = server
        self.headroom_bytes = headroom_bytes
        self.headers = headers or {}
        self.cap_bytes = 0

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, timeout_s: float = 180.0) -> MeasuredServer:
        self.server.start().wait_ready(timeout_s)
        return self.attach()

    def attach(self) -> MeasuredServer:
        """Warm the running server up and cap its address space at its virtual size + the headroom."""
        with Probe(self.url, self.headers):  # warm: first classify, prompt cache, thread pools
            pass
        self.cap_bytes = proc_status_bytes(self.pid, "VmSize") + self.headroom_bytes
        resource.prlimit(self.pid, resource.RLIMIT_AS, (self.cap_bytes, self.cap_bytes))
        return self

    def stop(self) -> None:
        self.server.stop()

    def alive(self) -> bool:
        return self.server.process is not None and self.server.process.poll() is None

    def rss(self) -> int:
        return proc_status_bytes(self.pid, "VmRSS")

    def attack(
        self, name: str, run: Callable[[httpx.Client], Iterable[int | str]], *, timeout_s: float = 60.0
    ) -> AttackResult:
        """Run ``run(client)`` (returns the statuses it got) while the probe runs; measure the server."""
        time.sleep(0.1)
        before = self.rss()
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        statuses: Counter[str] = Counter()
        detail = ""
        with (
            Probe(self.url, self.headers) as probe,
            httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout_s) as client,
        ):
            t0 = time.monotonic()
            try:
                for status in run(client):
                    statuses[str(status)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                detail = str(exc)[:200]
            seconds = time.monotonic() - t0
        alive = self.alive()
        peak = proc_status_bytes(self.pid, "VmHWM") if alive else 0
        time.sleep(0.2)
        after = self.rss() if self.alive() else 0
        return AttackResult(
            name=name,
            statuses=dict(statuses),
            seconds=round(seconds, 2),
            peak_growth_mb=round((peak - before) / MB, 1) if alive else float("nan"),
            retained_mb=round((after - before) / MB, 1) if alive else float("nan"),
            probes_ok=probe.log.ok,
            probes_failed=probe.log.failed,
            probe_max_s=round(probe.log.max_latency_s, 2),
            alive=alive,
            detail=detail,
        )
