"""Start a real server process on a free loopback port and wait for /readyz (end-to-end tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A server subprocess: ``command`` gets ``--port`` appended; env adds TRUSTSERVE_* settings."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        port: int | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.cwd = cwd or REPO_ROOT
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [*command, "--port", str(self.port)]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRUSTSERVE_LOG_JSON": "true", **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    def start(self) -> LiveServer:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> LiveServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.ready_after_s = time.monotonic() - self.started_at
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout_s} s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LiveServer:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:  # a server that never became ready must not outlive the test
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tiny_server(
    models_dir: Path,
    store_dir: Path,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> LiveServer:
    """The real server on the tiny random-weight model (fast start)."""
    return LiveServer(
        [sys.executable, "-m", "tests.support.serve_tiny", "--models-dir", str(models_dir)],
        env={"TRUSTSERVE_STORE_DIR": str(store_dir), **(env or {})},
        log_path=log_path,
        port=port,
    )


def default_server(
    store_dir: Path, log_path: Path | None = None, env: dict[str, str] | None = None
) -> LiveServer:
    """Exactly what the README runs: ``trustserve serve`` on the embedded offline default model."""
    return LiveServer(
        ["trustserve", "serve"],
        env={"TRUSTSERVE_STORE_DIR": str(store_dir), **(env or {})},
        log_path=log_path,
    )
