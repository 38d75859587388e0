"""Names shared by the runtime layer: runtimes, precisions, tower signatures, the start-up plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

Runtime = Literal["torch", "onnxruntime", "openvino"]
RuntimeSetting = Literal["auto", "torch", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# Bump when the export recipe changes in a way that makes old cache entries wrong.
EXPORT_FORMAT_VERSION = 1
ONNX_OPSET = 17


class UnsupportedSettingError(ValueError):
    """A runtime/precision/compile setting this backend, tower or machine cannot honour (start-up error)."""


class RuntimeUnavailableError(UnsupportedSettingError):
    """The runtime's package is not installed or failed to load."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input: dtype (``float32`` / ``int64``) and shape, ``None`` for a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}:{self.dtype}[{dims}]"


@dataclass(frozen=True)
class TowerSpec:
    """A tower's signature: named inputs and outputs. Batch (axis 0) is always dynamic.

    ``input_policy`` states everything about the inputs that changes the exported graph (image size,
    text length policy); it is part of the export-cache key.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    input_policy: str = ""

    def describe(self) -> str:
        return ";".join(s.describe() for s in self.inputs) + f"->{','.join(self.outputs)}|{self.input_policy}"


@dataclass(frozen=True)
class RuntimeRequest:
    """What the operator asked for (settings, possibly overridden per preset)."""

    runtime: RuntimeSetting = "auto"
    precision: Precision = "fp32"
    device: str = "auto"
    dtype: str = "auto"  # the torch runtime's dtype ("auto": fp16 on CUDA, else from precision)
    torch_compile: bool = False
    threads: int = 0  # 0: all cores
    calibration_dir: str | None = None  # images for int8 post-training quantization


@dataclass
class TowerReport:
    """What a tower runs on, and the evidence that chose it (for /v1/models and the start-up log)."""

    tower: str
    runtime: Runtime
    precision: Precision
    device: str
    cache: str  # "hit" | "built" | "none" (torch runtime)
    dtype: str = "float32"  # what the arithmetic runs in ("int8": quantized weights and activations)
    load_seconds: float = 0.0
    checks: dict[str, dict[str, float | bool | str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "device": self.device,
            "dtype": self.dtype,
            "cache": self.cache,
            "load_seconds": round(self.load_seconds, 3),
            "checks": self.checks,
        }
