"""The reference runtime: a torch module run eagerly (optionally ``torch.compile``-d) on CPU or CUDA.

Imported only for the torch runtime, for exports and for training — never on the ONNX Runtime / OpenVINO
request path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from app.runtime.types import Precision, Runtime

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_torch_dtype(dtype: str, device: torch.device, precision: Precision = "fp32") -> torch.dtype:
    """``auto`` -> fp16 on CUDA, else the precision's dtype (fp32, or bf16)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float32
    return _DTYPES[dtype]


def to_model_input(pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A CPU batch -> the model's device and dtype (non-blocking from pinned memory); channels_last on
    CUDA, where convolution and attention kernels prefer it."""
    pixels = pixels.to(device, dtype=dtype, non_blocking=True)
    if device.type == "cuda" and pixels.dim() == 4:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    return pixels


class TorchExecutor:
    """Runs ``module(*inputs in signature order)``; float inputs are cast to the module's dtype, integer
    inputs (token ids, masks) are kept. Outputs come back as float32 numpy arrays."""

    runtime: Runtime = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        input_names: tuple[str, ...],
        *,
        device: torch.device,
        dtype: torch.dtype,
        precision: Precision = "fp32",
        compile_module: bool = False,
    ) -> None:
        self.module = module.to(device=device, dtype=dtype).eval()
        if device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)
        self.input_names = input_names
        self.torch_device, self.dtype = device, dtype
        self.device, self.precision = str(device), precision
        self._call: Callable[..., object] = torch.compile(self.module) if compile_module else self.module

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.torch_device.type == "cuda":
            tensor = tensor.pin_memory()
        if tensor.is_floating_point():
            return to_model_input(tensor, self.torch_device, self.dtype)
        return tensor.to(self.torch_device, non_blocking=True)

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        out = self._call(*(self._tensor(inputs[name]) for name in self.input_names))
        outputs = out if isinstance(out, tuple | list) else (out,)
        return [o.float().cpu().numpy() for o in outputs]


class CallableTower(torch.nn.Module):
    """A tower as a module: ``forward(*inputs) = fn(model, *inputs)`` — how backends expose one path of a
    bigger model (``encode_image`` of a CLIP, pooled text embeddings of a BERT) for export and execution."""

    def __init__(self, model: torch.nn.Module, fn: Callable[..., object]) -> None:
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, *inputs: torch.Tensor) -> object:
        return self._fn(self.model, *inputs)
