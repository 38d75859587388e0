"""The runtime factory on a tiny conv tower: parity on every runtime, the auto verdict measured once and
reused, reduced precisions, and clear start-up errors for what cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.runtime import towers
from app.runtime.machine import cpu_supports_bf16
from app.runtime.towers import TowerSource, parity
from app.runtime.types import UnsupportedSettingError
from app.vlm.preprocessing import ImagePreprocessor, probe_images
from app.vlm.towers import image_tower_source
from tests.support.runtime import ALL_RUNTIMES, make_context

PREPROCESS = ImagePreprocessor(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _conv_tower():  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 8),
    )
    return body.eval()


def source(model: str = "tiny-conv") -> TowerSource:
    return image_tower_source(
        model=model,
        tower="image",
        identity={"test": "conv-seed0"},
        preprocessor=PREPROCESS,
        build_module=_conv_tower,
        outputs=("features",),
    )


def _reference(batch: int = 4) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _conv_tower()(torch.from_numpy(source().probe_inputs(batch)["pixels"])).numpy()


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_every_runtime_is_within_fp32_tolerance(tmp_path: Path, runtime: str) -> None:
    context = make_context(tmp_path, runtime)
    executor = context.tower(source())
    [out] = executor.run(source().probe_inputs(4))
    assert np.abs(out - _reference()).max() < 1e-4
    report = context.reports["image"]
    assert (report.runtime, report.precision) == (runtime, "fp32")
    if runtime != "torch":
        assert report.cache == "built" and report.checks[runtime]["passed"]
        assert make_context(tmp_path, runtime).tower(source()) is not None
        warm = make_context(tmp_path, runtime)
        warm.tower(source())
        assert warm.reports["image"].cache == "hit"


def test_auto_measures_once_and_reuses_its_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    context = make_context(tmp_path, "auto")
    context.tower(source())
    report = context.reports["image"]
    assert set(report.checks) == {"torch", "onnxruntime", "openvino"}
    assert all(v["passed"] and v["items_per_s"] > 0 for v in report.checks.values())
    fastest = max(report.checks, key=lambda r: report.checks[r]["items_per_s"])
    assert report.runtime == fastest
    [verdict_file] = (tmp_path / "verdicts").glob("*.json")
    assert json.loads(verdict_file.read_text())["chosen"] == fastest

    def no_measuring(*_: object, **__: object) -> dict[str, float]:
        raise AssertionError("a warm start must not measure again")

    monkeypatch.setattr(towers, "measure_speeds", no_measuring)
    warm = make_context(tmp_path, "auto")
    warm.tower(source())
    assert warm.reports["image"].runtime == fastest


def test_auto_skips_a_runtime_that_fails_parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = towers.parity

    def openvino_is_off(reference, outputs, precision):  # type: ignore[no-untyped-def]
        result = real(reference, outputs, precision)
        if outputs is not None and getattr(openvino_is_off, "calls", 0) == 1:
            result = {**result, "passed": False}
        openvino_is_off.calls = getattr(openvino_is_off, "calls", 0) + 1  # type: ignore[attr-defined]
        return result

    monkeypatch.setattr(towers, "parity", openvino_is_off)  # ORT is checked first, then OpenVINO
    context = make_context(tmp_path, "auto")
    context.tower(source())
    checks = context.reports["image"].checks
    assert checks["onnxruntime"]["passed"] and not checks["openvino"]["passed"]
    assert context.reports["image"].runtime in {"torch", "onnxruntime"}


def test_parity_rule() -> None:
    ref = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)]
    assert parity(ref, [ref[0] + 3e-4], "fp32")["passed"]  # 1e-4 x max|ref| = 4e-4
    assert not parity(ref, [ref[0] + 5e-4], "fp32")["passed"]
    assert parity(ref, [ref[0] * 1.01], "bf16")["passed"]  # same direction
    assert not parity(ref, [ref[0][:, ::-1].copy()], "bf16")["passed"]
    assert not parity(ref, [np.full_like(ref[0], np.nan)], "fp32")["passed"]


def _calibration_dir(root: Path, count: int = 12) -> Path:
    folder = root / "calibration"
    folder.mkdir()
    for i, image in enumerate(probe_images(count, seed=1)):  # photo-like, as the parity probes
        image.save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_quantizes_on_the_users_images(tmp_path: Path, runtime: str) -> None:
    context = make_context(
        tmp_path, runtime, precision="int8", calibration_dir=str(_calibration_dir(tmp_path))
    )
    executor = context.tower(source())
    [out] = executor.run(source().probe_inputs(4))
    report = context.reports["image"]
    assert (report.precision, report.dtype) == ("int8", "int8")
    assert report.checks[runtime]["min_cosine"] >= 0.95
    cos = (out * _reference()).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(_reference(), axis=1))
    assert cos.min() >= 0.95
    manifest = json.loads(next((tmp_path / "entries").glob("*/manifest.json")).read_text())
    assert manifest["meta"]["calibration_images"] == 12 and "calibration" in manifest["fields"]


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_runs_on_openvino(tmp_path: Path) -> None:
    context = make_context(tmp_path, "openvino", precision="bf16")
    [out] = context.tower(source()).run(source().probe_inputs(4))
    assert context.reports["image"].dtype == "bfloat16"
    ref = _reference()
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99


def test_text_towers_stay_fp32(tmp_path: Path) -> None:
    text = source()
    text.precisions = ("fp32",)
    context = make_context(
        tmp_path, "openvino", precision="int8", calibration_dir=str(_calibration_dir(tmp_path))
    )
    context.tower(text)
    assert context.reports["image"].precision == "fp32"


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"runtime": "onnxruntime", "torch_compile": True}, "TORCH_COMPILE"),
        ({"runtime": "onnxruntime", "precision": "bf16"}, "cannot run precision 'bf16'"),
        ({"runtime": "torch", "precision": "int8", "calibration_dir": "."}, "cannot run precision 'int8'"),
        ({"runtime": "openvino", "precision": "int8"}, "TRUSTSERVE_INT8_CALIBRATION_DIR"),
        ({"runtime": "openvino", "precision": "int8", "calibration_dir": "/nope"}, "does not exist"),
        ({"runtime": "tensorflow"}, "unknown runtime"),
    ],
)
def test_unsupported_settings_are_refused_clearly(tmp_path: Path, request_args: dict, message: str) -> None:
    with pytest.raises(UnsupportedSettingError, match=message):
        make_context(tmp_path, **request_args)


def test_bf16_is_refused_on_a_cpu_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(towers, "cpu_supports_bf16", lambda: False)
    with pytest.raises(UnsupportedSettingError, match="native bf16"):
        make_context(tmp_path, "openvino", precision="bf16")


def test_torch_compile_with_auto_means_torch(tmp_path: Path) -> None:
    context = make_context(tmp_path, "auto", torch_compile=True)
    assert context.candidates("fp32") == ["torch"]
