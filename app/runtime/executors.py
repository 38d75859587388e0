"""Executors: run one exported tower on ONNX Runtime or OpenVINO. Numpy in, numpy out, no torch.

Every executor takes a mapping of input name -> array and returns the outputs in the tower's order, as
float32 arrays on the CPU. One executor is called from one model thread at a time; the OpenVINO executor
also guards its infer request with a lock so that an evaluation script may share it across threads.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from app.runtime.types import Precision, Runtime, RuntimeUnavailableError


@runtime_checkable
class TowerExecutor(Protocol):
    """Runs one tower."""

    runtime: Runtime
    precision: Precision
    device: str

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Input arrays by name -> output arrays (float32, C-contiguous, CPU) in the tower's order."""
        ...


def runtime_version(runtime: Runtime) -> str:
    """The installed package version of ``runtime`` (without importing it); part of the cache key."""
    package = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        if runtime == "onnxruntime":  # the GPU build has another distribution name
            for name in ("onnxruntime-gpu", "onnxruntime-openvino"):
                try:
                    return importlib.metadata.version(name)
                except importlib.metadata.PackageNotFoundError:
                    continue
        raise RuntimeUnavailableError(
            f"runtime {runtime!r} is not installed (pip install {package})"
        ) from None


def _as_outputs(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


def onnxruntime_providers(device: str) -> list[str]:
    """Execution providers for ``device``: CPU always; CUDA (TensorRT first) where the installed build has
    them."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            raise RuntimeUnavailableError(
                f"onnxruntime has no CUDA provider here (available: {available}); install onnxruntime-gpu"
            )
        return [*wanted, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeExecutor:
    """An ONNX model in an ``onnxruntime.InferenceSession`` (graph optimisations on, fixed thread count)."""

    runtime: Runtime = "onnxruntime"

    def __init__(self, model_path: Path, *, precision: Precision, device: str, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a regular dependency
            raise RuntimeUnavailableError(f"onnxruntime cannot be imported: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # no busy-waiting between parallel sections: the decoding threads and the event loop share the
        # cores with the model (spinning burnt ~30 % more CPU per image in a loaded server)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.precision, self.device = precision, device
        self._session = ort.InferenceSession(
            str(model_path), options, providers=onnxruntime_providers(device)
        )
        self._input_names = [i.name for i in self._session.get_inputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feed = {name: inputs[name] for name in self._input_names}
        return _as_outputs(self._session.run(None, feed))


class OpenVinoExecutor:
    """An OpenVINO IR compiled for the CPU; bf16 is OpenVINO's inference-precision hint on the fp32 IR."""

    runtime: Runtime = "openvino"

    def __init__(
        self,
        model_xml: Path,
        *,
        input_names: tuple[str, ...],
        precision: Precision,
        device: str,
        threads: int,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeUnavailableError(f"openvino cannot be imported: {exc}") from exc
        if device != "cpu":
            raise RuntimeUnavailableError(f"the openvino runtime here serves the CPU only, not {device!r}")
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            # fp32 must stay fp32 (OpenVINO would otherwise pick bf16 on CPUs that have it)
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        self.precision, self.device = precision, device
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(str(model_xml)), "CPU", config)
        self._request = self._compiled.create_infer_request()
        # an input port may carry several tensor names (e.g. a Cast folded into it): pick ours
        self._input_names = [_port_name(port.get_names(), input_names) for port in self._compiled.inputs]
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feed = [np.ascontiguousarray(inputs[name]) for name in self._input_names]
        with self._lock:
            result = self._request.infer(feed, share_inputs=True)  # reads the batch in place, no copy
            return _as_outputs([np.array(result[port]) for port in self._compiled.outputs])


def _port_name(names: set[str], wanted: tuple[str, ...]) -> str:
    for name in wanted:
        if name in names:
            return name
    raise ValueError(f"model input {sorted(names)} is none of the tower's inputs {list(wanted)}")
