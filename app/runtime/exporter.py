"""Export: torch module -> ONNX (torch.onnx, TorchScript-based exporter) -> OpenVINO IR; int8 post-training
quantization (OpenVINO: NNCF; ONNX Runtime: static QDQ quantization), calibrated on the user's images.

Imports torch; used only when a cache entry has to be built.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from app.runtime.types import ONNX_OPSET, TowerSpec

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(module: object, spec: TowerSpec, example: Mapping[str, np.ndarray], path: Path) -> None:
    """Trace ``module`` on ``example`` (fp32, CPU) and write ``path`` with a dynamic batch axis and every
    axis the spec leaves open (e.g. a text tower's sequence length)."""
    import torch

    dynamic_axes: dict[str, dict[int, str]] = {}
    for tensor in spec.inputs:
        axes = {0: "batch"}
        axes.update({i: f"{tensor.name}_dim{i}" for i, d in enumerate(tensor.shape) if d is None and i > 0})
        dynamic_axes[tensor.name] = axes
    for name in spec.outputs:
        dynamic_axes[name] = {0: "batch"}
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[t.name])) for t in spec.inputs)
    torch_module = cast("torch.nn.Module", module).float().eval()
    # grad stays on while tracing: under no_grad torch takes fused fast paths (e.g.
    # aten::_native_multi_head_attention) that have no ONNX form
    with _quiet(), torch.inference_mode(False), torch.enable_grad():
        torch.onnx.export(
            torch_module,
            args,
            str(path),
            dynamo=False,
            input_names=[t.name for t in spec.inputs],
            output_names=list(spec.outputs),
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )


def onnx_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert ONNX to OpenVINO IR with fp32 weights (no fp16 compression: fp32 must stay exact)."""
    import openvino as ov

    with _quiet():
        model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def quantize_openvino_int8(
    xml_in: Path, xml_out: Path, calibration: Sequence[Mapping[str, np.ndarray]], *, transformer: bool
) -> None:
    """NNCF post-training quantization (8-bit weights and activations) calibrated on ``calibration``."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(xml_in))
    names = list(calibration[0])  # the tower's inputs, in the model's (ONNX) input order
    dataset = nncf.Dataset([[np.ascontiguousarray(item[n]) for n in names] for item in calibration])
    with _quiet():
        quantized = nncf.quantize(
            model,
            dataset,
            subset_size=len(calibration),
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            preset=nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE,
        )
    ov.save_model(quantized, str(xml_out), compress_to_fp16=False)


def quantize_onnx_int8(
    onnx_in: Path, onnx_out: Path, calibration: Sequence[Mapping[str, np.ndarray]]
) -> None:
    """ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {k: np.ascontiguousarray(v) for k, v in item.items()}

    with _quiet():
        quantize_static(
            str(onnx_in),
            str(onnx_out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
