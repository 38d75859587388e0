"""Facts about this machine that decide what a runtime can do, read without importing torch."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
from pathlib import Path

# CPU flags with native bf16 arithmetic (AVX512-BF16 on Cooper Lake and later Xeons / Zen 4, AMX on Sapphire
# Rapids). Without them bf16 is emulated and slower than fp32, so the runtime layer refuses it.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The ``flags`` line of /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def effective_threads(requested: int) -> int:
    """``0`` means every core this process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def machine_fingerprint(threads: int) -> str:
    """Identifies where a speed measurement is valid: CPU model, ISA flags that matter, thread count."""
    relevant = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4")))
    text = "|".join([platform.machine(), cpu_model_name(), ",".join(relevant), str(threads)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def nvidia_gpu_present() -> bool:
    """A CUDA device exists (checked without importing torch: the driver's files)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def resolve_device_name(device: str) -> str:
    """``auto`` -> ``cuda`` when a usable CUDA device exists, else ``cpu``. Imports torch only where an
    NVIDIA driver is present (the only case where torch can answer yes)."""
    if device != "auto":
        return device
    if nvidia_gpu_present() and torch_installed():
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"
