"""The factory: for each tower a backend describes, pick the runtime, export once, check, hand back an
executor.

``auto`` measures, on this machine, every runtime that can run the tower at the requested precision and
passes the parity check against the torch reference, and keeps the fastest; the verdict is cached with the
export (``verdicts/``), so a warm start re-reads it instead of measuring. A warm start of an exported
runtime never imports torch.

Parity (against torch fp32 on probe inputs): fp32 must be exact enough to be invisible, max |Δ| ≤ 1e-4 ·
max(1, max |reference|) on every output; bf16 and int8 trade exactness for speed and only have to keep every
output row's cosine to the reference ≥ 0.95 (bf16) / 0.8 (int8) — a check that the conversion works; their
effect on answers is measured by ``benchmarks/runtime/quality.py`` (top-1 agreement, TrustVLM AUROC).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.cache import CacheEntry, ExportCache, write_json_atomic
from app.runtime.executors import OnnxRuntimeExecutor, OpenVinoExecutor, TowerExecutor, runtime_version
from app.runtime.machine import (
    cpu_supports_bf16,
    effective_threads,
    machine_fingerprint,
    resolve_device_name,
    torch_installed,
)
from app.runtime.types import (
    RUNTIMES,
    Precision,
    Runtime,
    RuntimeRequest,
    RuntimeUnavailableError,
    TowerReport,
    TowerSpec,
    UnsupportedSettingError,
)

log = logging.getLogger(__name__)

# What each runtime can execute (the CPU builds installed here; ORT's CPU provider has no bf16 kernels).
RUNTIME_PRECISIONS: dict[Runtime, frozenset[Precision]] = {
    "torch": frozenset({"fp32", "bf16"}),
    "onnxruntime": frozenset({"fp32", "int8"}),
    "openvino": frozenset({"fp32", "bf16", "int8"}),
}
FP32_TOLERANCE = 1e-4
# Reduced precisions only have to show a working conversion (outputs pointing the same way); what they
# cost in answers is measured, not assumed: benchmarks/runtime/quality.py (top-1 agreement, AUROC).
MIN_COSINE: dict[Precision, float] = {"fp32": 1.0, "bf16": 0.95, "int8": 0.8}
PARITY_BATCH = 4
SPEED_BATCH = 8
MAX_CALIBRATION_IMAGES = 300
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Order tried when speeds cannot be measured (no torch to build what is missing): the usual winner first.
STATIC_PREFERENCE: tuple[Runtime, ...] = ("openvino", "onnxruntime", "torch")


@dataclass
class TowerSource:
    """Everything the runtime layer needs to know about one tower, described by its backend.

    ``identity``: what makes this tower's weights and graph (weights checksum, architecture, arguments that
    change the graph); computed without torch. ``build_module``: the fp32 CPU torch module whose
    ``forward(*inputs in spec order)`` returns the spec's outputs (called at most once, only to export or
    for the torch runtime). ``probe_inputs(n)``: deterministic inputs for n items. ``precisions``: what the
    tower may run at (others fall back to fp32, e.g. text towers). ``calibration_inputs``: image files ->
    inputs, for int8.
    """

    model: str
    tower: str
    spec: TowerSpec
    identity: dict[str, Any]
    build_module: Callable[[], Any]
    probe_inputs: Callable[[int], dict[str, np.ndarray]]
    precisions: tuple[Precision, ...] = ("fp32",)
    calibration_inputs: Callable[[Sequence[Path]], list[dict[str, np.ndarray]]] | None = None
    transformer: bool = False
    _module: Any = field(default=None, init=False, repr=False)

    def module(self) -> Any:
        if self._module is None:
            if not torch_installed():
                raise RuntimeUnavailableError(
                    f"{self.model}/{self.tower}: the export cache has no usable entry and torch (needed to "
                    "export) is not installed; build the cache with `trustserve models export` first"
                )
            self._module = self.build_module()
        return self._module

    def release(self) -> None:
        self._module = None


def parity(reference: list[np.ndarray], outputs: list[np.ndarray], precision: Precision) -> dict[str, Any]:
    """Max |Δ|, the fp32 tolerance and the worst row cosine of every output against the reference."""
    max_abs, worst_cos, passed = 0.0, 1.0, True
    for ref, out in zip(reference, outputs, strict=True):
        if ref.shape != out.shape or not np.isfinite(out).all():
            return {"passed": False, "max_abs": float("inf"), "min_cosine": -1.0}
        delta = float(np.abs(ref.astype(np.float64) - out).max(initial=0.0))
        scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
        r, o = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
        cos = (r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)).clip(min=1e-12)
        max_abs, worst_cos = max(max_abs, delta / scale), min(worst_cos, float(cos.min(initial=1.0)))
        if precision == "fp32":
            passed &= delta <= FP32_TOLERANCE * scale
    if precision != "fp32":
        passed = worst_cos >= MIN_COSINE[precision]
    return {"passed": bool(passed), "max_abs": max_abs, "min_cosine": worst_cos}


def passes(check: dict[str, Any], precision: Precision) -> bool:
    """The parity rule applied to stored numbers (``max_abs`` is already relative to max |reference|)."""
    if precision == "fp32":
        return float(check.get("max_abs", float("inf"))) <= FP32_TOLERANCE
    return float(check.get("min_cosine", -1.0)) >= MIN_COSINE[precision]


def measure_speeds(
    executors: dict[str, TowerExecutor], inputs: dict[str, np.ndarray], budget_s: float = 6.0
) -> dict[str, float]:
    """Items per second of each executor on ``inputs``, timed round-robin (every round runs each executor
    once, so a change in the machine's load hits all of them alike; a shared machine otherwise decides
    the verdict): 2 warm-up runs each, then the median of 3 to 7 rounds (``budget_s`` decides)."""
    batch = len(next(iter(inputs.values())))
    for executor in executors.values():
        for _ in range(2):
            executor.run(inputs)
    times: dict[str, list[float]] = {name: [] for name in executors}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < 7 and (rounds < 3 or time.perf_counter() < deadline):
        for name, executor in executors.items():
            started = time.perf_counter()
            executor.run(inputs)
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return {name: batch / statistics.median(values) for name, values in times.items()}


class RuntimeContext:
    """Settings for one model load + the export cache; builds executors for the towers backends describe."""

    def __init__(self, request: RuntimeRequest, cache: ExportCache, model: str) -> None:
        self.request, self.cache, self.model = request, cache, model
        self.device = resolve_device_name(request.device)
        self.threads = effective_threads(request.threads)
        self.reports: dict[str, TowerReport] = {}
        self._sources: list[TowerSource] = []
        self._references: dict[tuple[int, bool], list[np.ndarray]] = {}
        self._onnx: dict[int, Path] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="trustserve-export-")
        self._check_request()

    # validation -------------------------------------------------------------------------------------------
    def _check_request(self) -> None:
        r = self.request
        if r.runtime not in ("auto", *RUNTIMES):
            raise UnsupportedSettingError(f"unknown runtime {r.runtime!r}; use auto or one of {RUNTIMES}")
        if r.torch_compile and r.runtime not in ("auto", "torch"):
            raise UnsupportedSettingError(
                f"TRUSTSERVE_TORCH_COMPILE=1 compiles torch modules; runtime {r.runtime!r} runs exported "
                "graphs. Use TRUSTSERVE_RUNTIME=torch (or auto, which then picks torch)."
            )
        if r.runtime != "auto" and r.precision not in RUNTIME_PRECISIONS[r.runtime]:
            can = sorted(k for k, v in RUNTIME_PRECISIONS.items() if r.precision in v)
            raise UnsupportedSettingError(
                f"runtime {r.runtime!r} cannot run precision {r.precision!r}; runtimes that can: {can}"
            )
        if r.precision == "bf16" and self.device == "cpu" and not cpu_supports_bf16():
            raise UnsupportedSettingError(
                "precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this CPU has neither "
                "(bf16 would be emulated and slower than fp32). Use TRUSTSERVE_PRECISION=fp32 or int8."
            )
        if r.precision == "int8" and not r.calibration_dir:
            raise UnsupportedSettingError(
                "precision int8 is post-training quantization calibrated on your images: set "
                "TRUSTSERVE_INT8_CALIBRATION_DIR to a folder of representative images (a few hundred)"
            )
        if r.precision == "int8" and not Path(r.calibration_dir or "").is_dir():
            raise UnsupportedSettingError(f"int8 calibration folder {r.calibration_dir!r} does not exist")

    def precision_for(self, source: TowerSource) -> Precision:
        return self.request.precision if self.request.precision in source.precisions else "fp32"

    def candidates(self, precision: Precision) -> list[Runtime]:
        """Runtimes ``auto`` may pick for this device and precision."""
        if self.request.torch_compile:
            return ["torch"]
        if self.device.startswith("cuda"):
            found: list[Runtime] = ["torch"]
            with contextlib.suppress(Exception):
                from app.runtime.executors import onnxruntime_providers

                onnxruntime_providers(self.device)
                found.append("onnxruntime")
            return [r for r in found if precision in RUNTIME_PRECISIONS[r]]
        out: list[Runtime] = []
        for runtime in RUNTIMES:
            if precision not in RUNTIME_PRECISIONS[runtime]:
                continue
            try:
                runtime_version(runtime)
            except RuntimeUnavailableError:
                continue
            out.append(runtime)
        return out

    # the factory ------------------------------------------------------------------------------------------
    def tower(self, source: TowerSource) -> TowerExecutor:
        """An executor for ``source`` on the requested (or, for auto, the measured best) runtime."""
        self._sources.append(source)
        precision = self.precision_for(source)
        started = time.perf_counter()
        if self.request.runtime == "auto":
            executor, report = self._auto(source, precision)
        elif self.request.runtime == "torch":
            executor, report = (
                self._torch(source, precision),
                self._report(source, "torch", precision, "none"),
            )
        else:
            executor, report = self._exported(source, self.request.runtime, precision)
        report.load_seconds = time.perf_counter() - started
        self.reports[source.tower] = report
        log.info(
            "%s/%s runs on %s %s (%s, cache %s, %.2f s)",
            source.model,
            source.tower,
            report.runtime,
            report.precision,
            report.device,
            report.cache,
            report.load_seconds,
        )
        return executor

    def _report(self, source: TowerSource, runtime: Runtime, precision: Precision, cache: str) -> TowerReport:
        dtype = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}[precision]
        if runtime == "torch":
            import torch

            from app.runtime.torch_executor import resolve_torch_dtype

            dtype = str(resolve_torch_dtype(self.request.dtype, torch.device(self.device), precision))
            dtype = dtype.removeprefix("torch.")
        return TowerReport(source.tower, runtime, precision, self.device, cache, dtype)

    def _torch(self, source: TowerSource, precision: Precision) -> TowerExecutor:
        if precision == "int8":
            raise UnsupportedSettingError("runtime torch has no int8 path; use openvino or onnxruntime")
        import torch

        from app.runtime.torch_executor import TorchExecutor, resolve_torch_dtype

        device = torch.device(self.device)
        return TorchExecutor(
            source.module(),
            tuple(t.name for t in source.spec.inputs),
            device=device,
            dtype=resolve_torch_dtype(self.request.dtype, device, precision),
            precision=precision,
            compile_module=self.request.torch_compile,
        )

    # exported runtimes ------------------------------------------------------------------------------------
    def _fields(self, source: TowerSource, runtime: Runtime, precision: Precision) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": source.model,
            "tower": source.tower,
            "identity": source.identity,
            "signature": source.spec.describe(),
            "runtime": runtime,
            "runtime_version": runtime_version(runtime),
            # bf16 is an OpenVINO execution hint on the fp32 graph; int8 is another graph
            "weights_precision": "int8" if precision == "int8" else "fp32",
        }
        if precision == "int8":
            fields["calibration"] = self._calibration_checksum()
        return fields

    def _calibration_files(self) -> list[Path]:
        folder = Path(self.request.calibration_dir or "")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UnsupportedSettingError(f"int8 calibration folder {folder} holds no images")
        return files[:MAX_CALIBRATION_IMAGES]

    def _calibration_checksum(self) -> str:
        parts = [f"{p.name}:{self.cache.file_checksum(p)}" for p in self._calibration_files()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _onnx_file(self, source: TowerSource) -> Path:
        """The tower exported to ONNX once per load (shared by the ORT and OpenVINO builds)."""
        if id(source) not in self._onnx:
            from app.runtime.exporter import export_onnx

            path = Path(self._tmp.name) / f"{len(self._onnx)}-{source.tower}.onnx"
            started = time.perf_counter()
            export_onnx(source.module(), source.spec, source.probe_inputs(2), path)
            log.info(
                "%s/%s exported to ONNX in %.1f s", source.model, source.tower, time.perf_counter() - started
            )
            self._onnx[id(source)] = path
        return self._onnx[id(source)]

    def _build(
        self, source: TowerSource, runtime: Runtime, precision: Precision, folder: Path
    ) -> dict[str, Any]:
        from app.runtime import exporter

        started = time.perf_counter()
        onnx_file = self._onnx_file(source)
        calibration: list[dict[str, np.ndarray]] = []
        if precision == "int8":
            if source.calibration_inputs is None:
                raise UnsupportedSettingError(f"{source.tower} tower cannot be calibrated for int8")
            calibration = source.calibration_inputs(self._calibration_files())
        if runtime == "onnxruntime":
            if precision == "int8":
                exporter.quantize_onnx_int8(onnx_file, folder / "model.onnx", calibration)
            else:
                shutil.copyfile(onnx_file, folder / "model.onnx")
        elif runtime == "openvino":
            if precision == "int8":
                fp32_xml = Path(self._tmp.name) / f"{id(source)}-fp32.xml"
                exporter.onnx_to_openvino(onnx_file, fp32_xml)
                exporter.quantize_openvino_int8(
                    fp32_xml, folder / "model.xml", calibration, transformer=source.transformer
                )
            else:
                exporter.onnx_to_openvino(onnx_file, folder / "model.xml")
        import torch

        return {
            "exporter": f"torch {torch.__version__} (torch.onnx, opset from app.runtime.types)",
            "calibration_images": len(calibration),
            "build_seconds": round(time.perf_counter() - started, 2),
        }

    def _executor(
        self, source: TowerSource, entry: CacheEntry, runtime: Runtime, precision: Precision
    ) -> TowerExecutor:
        if runtime == "onnxruntime":
            return OnnxRuntimeExecutor(
                entry.file("model.onnx"), precision=precision, device=self.device, threads=self.threads
            )
        return OpenVinoExecutor(
            entry.file("model.xml"),
            input_names=tuple(t.name for t in source.spec.inputs),
            precision=precision,
            device=self.device,
            threads=self.threads,
        )

    def parity_inputs(self, source: TowerSource, precision: Precision) -> dict[str, np.ndarray]:
        """What a conversion is checked on: the deterministic probes, or for int8 the first calibration
        images (the data the user declared representative; the quantizer was fitted for it)."""
        if precision == "int8" and source.calibration_inputs is not None:
            items = source.calibration_inputs(self._calibration_files()[:PARITY_BATCH])
            return {name: np.concatenate([item[name] for item in items]) for name in items[0]}
        return source.probe_inputs(PARITY_BATCH)

    def _reference(self, source: TowerSource, precision: Precision = "fp32") -> list[np.ndarray]:
        key = (id(source), precision == "int8")
        if key not in self._references:
            import torch

            from app.runtime.torch_executor import TorchExecutor

            executor = TorchExecutor(
                source.module(),
                tuple(t.name for t in source.spec.inputs),
                device=torch.device("cpu"),
                dtype=torch.float32,
            )
            self._references[key] = executor.run(self.parity_inputs(source, precision))
        return self._references[key]

    def _exported(
        self, source: TowerSource, runtime: Runtime, precision: Precision
    ) -> tuple[TowerExecutor, TowerReport]:
        fields = self._fields(source, runtime, precision)
        key = self.cache.key(f"{source.model}-{source.tower}-{runtime}-{fields['weights_precision']}", fields)
        entry, built = self.cache.get_or_build(
            key, fields, lambda d: self._build(source, runtime, precision, d)
        )
        executor = self._executor(source, entry, runtime, precision)
        check_name = f"parity-{precision}-{self.device.split(':')[0]}"
        if precision == "int8":
            check_name += "-on-calibration-images"
        check = entry.read_check(check_name)
        if check is None:
            if torch_installed():
                outputs = executor.run(self.parity_inputs(source, precision))
                check = parity(self._reference(source, precision), outputs, precision)
                entry.write_check(check_name, check)
            else:
                log.warning(
                    "%s/%s on %s: parity not verified here (no torch)", source.model, source.tower, runtime
                )
                check = {"passed": True, "verified": False}
        elif check.get("verified", True):  # stored numbers are judged by today's rule
            check = {**check, "passed": passes(check, precision)}
        if not check["passed"]:
            raise UnsupportedSettingError(
                f"{source.model}/{source.tower} on {runtime} {precision} fails the parity check against "
                f"torch "
                f"(max |Δ| {check.get('max_abs'):.3g} relative, min cosine {check.get('min_cosine'):.6f}); "
                "use another runtime"
            )
        report = self._report(source, runtime, precision, "built" if built else "hit")
        report.checks[runtime] = {k: v for k, v in check.items() if isinstance(v, float | bool | str)}
        return executor, report

    # auto -------------------------------------------------------------------------------------------------
    def _verdict_path(self, source: TowerSource, precision: Precision, candidates: list[Runtime]) -> Path:
        fields = {
            "model": source.model,
            "tower": source.tower,
            "identity": source.identity,
            "signature": source.spec.describe(),
            "precision": precision,
            "device": self.device,
            "machine": machine_fingerprint(self.threads),
            "candidates": {r: runtime_version(r) for r in candidates},
        }
        return (
            self.cache.root / "verdicts" / f"{self.cache.key(f'{source.model}-{source.tower}', fields)}.json"
        )

    def _auto(self, source: TowerSource, precision: Precision) -> tuple[TowerExecutor, TowerReport]:
        candidates = self.candidates(precision)
        if not candidates:
            raise UnsupportedSettingError(
                f"no installed runtime can run precision {precision!r} on {self.device}"
            )
        verdict_path = self._verdict_path(source, precision, candidates)
        with contextlib.suppress(OSError, ValueError):
            import json

            verdict = json.loads(verdict_path.read_text())
            chosen = verdict["chosen"]
            if chosen in candidates:
                executor, report = self._load_one(source, chosen, precision)
                report.checks = verdict["results"]
                return executor, report
        if not torch_installed():  # no reference to measure against: use what the cache has
            return self._auto_without_torch(source, precision, candidates)
        results: dict[str, dict[str, Any]] = {}
        loaded: dict[str, tuple[TowerExecutor, TowerReport]] = {}
        for runtime in candidates:
            try:
                executor, report = self._load_one(source, runtime, precision)
                check = report.checks.get(runtime, {"passed": True})
                if runtime == "torch" and precision != "fp32":
                    check = parity(
                        self._reference(source), executor.run(source.probe_inputs(PARITY_BATCH)), precision
                    )
                results[runtime] = {**check, "items_per_s": 0.0}
                if check.get("passed"):
                    loaded[runtime] = (executor, report)
            except UnsupportedSettingError as exc:
                results[runtime] = {"passed": False, "error": str(exc)}
        if not loaded:
            raise UnsupportedSettingError(f"{source.model}/{source.tower}: no runtime passed: {results}")
        speeds = measure_speeds({r: e for r, (e, _) in loaded.items()}, source.probe_inputs(SPEED_BATCH))
        for measured, speed in speeds.items():
            results[measured]["items_per_s"] = round(speed, 2)
        chosen = max(loaded, key=lambda r: results[r]["items_per_s"])
        with contextlib.suppress(OSError):
            write_json_atomic(verdict_path, {"chosen": chosen, "results": results, "threads": self.threads})
        log.info(
            "%s/%s auto: %s",
            source.model,
            source.tower,
            {r: v.get("items_per_s") for r, v in results.items()},
        )
        executor, report = loaded[chosen]
        report.checks = results
        return executor, report

    def _auto_without_torch(
        self, source: TowerSource, precision: Precision, candidates: list[Runtime]
    ) -> tuple[TowerExecutor, TowerReport]:
        for runtime in STATIC_PREFERENCE:
            if runtime in candidates and runtime != "torch":
                try:
                    return self._exported(source, runtime, precision)
                except RuntimeUnavailableError:
                    continue
        raise RuntimeUnavailableError(
            f"{source.model}/{source.tower}: no exported {precision} entry in {self.cache.root} and no "
            "torch to build one; run `trustserve models export` where torch is installed"
        )

    def _load_one(
        self, source: TowerSource, runtime: Runtime, precision: Precision
    ) -> tuple[TowerExecutor, TowerReport]:
        if runtime == "torch":
            return self._torch(source, precision), self._report(source, "torch", precision, "none")
        return self._exported(source, runtime, precision)

    # assets -----------------------------------------------------------------------------------------------
    def assets(
        self, name: str, fields: dict[str, Any], build: Callable[[Path], dict[str, Any]]
    ) -> CacheEntry:
        """Runtime-independent files a backend needs to serve without torch (tokenizer, preprocessing,
        scalars, class embeddings), built once from the torch model and cached like exports."""
        key = self.cache.key(f"{self.model}-{name}", {"assets": name, **fields})
        try:
            entry, _ = self.cache.get_or_build(key, {"assets": name, **fields}, build)
            return entry
        except OSError as exc:  # unwritable cache: build into this load's temporary folder
            log.warning(
                "export cache %s not writable (%s); building assets in a temporary folder",
                self.cache.root,
                exc,
            )
            folder = Path(self._tmp.name) / key
            folder.mkdir(parents=True, exist_ok=True)
            meta = build(folder)
            files: dict[str, dict[str, Any]] = {
                str(p.relative_to(folder)): {} for p in folder.rglob("*") if p.is_file()
            }
            return CacheEntry(folder, {"files": files, "meta": meta})

    def close(self) -> None:
        """Drop torch modules and temporary exports that were only needed to build (frees memory)."""
        for source in self._sources:
            report = self.reports.get(source.tower)
            if report is None or report.runtime != "torch":  # a torch executor keeps its module
                source.release()
        self._references.clear()
        self._onnx.clear()
        self._tmp.cleanup()
