"""A calibration applies only to the numbers it was computed on (``app.labelsets.basis``): the runtime and
precision the image path ran on are part of them. A label set calibrated on the torch reference (fp32)
and served by ONNX Runtime fp32 keeps its calibration — within the tested parity bound its decisions on
the calibration images are the same, except on an image whose score is the threshold itself; served by
an int8 image tower it says its calibration does not apply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.engine.engine import ClassificationEngine
from app.labelsets.basis import arrays_digest, calibration_problem, numerics_problem
from app.labelsets.calibration import CalibrationRequest
from app.labelsets.models import CalibrationBasis, CalibrationRecord, TowerNumerics
from app.labelsets.service import LabelSetService
from app.labelsets.store import DirectoryStore
from app.labelsets.support import encode
from app.vlm.backends.open_clip_backend import create_open_clip_backend
from tests.labelsets.conftest import TINY_ARCH, colour_image, make_settings
from tests.support.runtime import make_context

LABELS = ["red", "green", "blue"]
FP32_CPU = TowerNumerics(runtime="torch", precision="fp32", dtype="float32", device="cpu")
SCORE_PARITY = 1e-5  # max |Δ trust score| fp32 ONNX Runtime vs torch on the tiny model (measured: 2e-7)


def _engine(
    tiny_engine: ClassificationEngine, cache: Path, runtime: str, **request: object
) -> ClassificationEngine:
    """The tiny model (same seeded weights as ``tiny_engine``) on another runtime / precision."""
    backend = create_open_clip_backend(make_context(cache, runtime, **request), architecture=TINY_ARCH)
    return ClassificationEngine(tiny_engine.preset, backend, None, tiny_engine.settings)


def _calibration_images(n: int = 60) -> tuple[list[str], list]:  # type: ignore[type-arg]
    labels = [LABELS[i % 3] for i in range(n)]
    return labels, [colour_image(label, seed=300 + i) for i, label in enumerate(labels)]


async def _scored(
    service: LabelSetService, engine: ClassificationEngine
) -> tuple[np.ndarray, list[bool | None]]:
    """The trust scores of the calibration images on ``engine`` and the label set's decisions on them."""
    _, images = _calibration_images()
    embeddings, features = await encode(engine, images)
    view = service.repository.get_view("colours")
    scored = view.score(embeddings, features, logit_scale=engine.logit_scale, logit_bias=engine.logit_bias)
    scores = np.asarray(scored.scores[view.trust_score], dtype=np.float64)
    return scores, [view.decide(float(s)).accept for s in scores]


async def _decisions(service: LabelSetService, engine: ClassificationEngine) -> list[bool | None]:
    return (await _scored(service, engine))[1]


def _int8_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        colour_image(LABELS[i % 3], seed=i).save(folder / f"{i}.png")
    return folder


def test_calibration_follows_the_runtime_and_precision(
    tmp_path: Path, tiny_engine: ClassificationEngine
) -> None:
    async def scenario() -> None:
        await tiny_engine.start()
        service = LabelSetService(DirectoryStore(tmp_path / "store"), tiny_engine, make_settings(tmp_path))
        await service.repository.create("colours", LABELS)
        labels = [label for label in LABELS for _ in range(4)]
        await service.support.add("colours", labels, [colour_image(x, seed=i) for i, x in enumerate(labels)])
        cal_labels, cal_images = _calibration_images()
        request = CalibrationRequest(rule="target_coverage", target_coverage=0.8)
        view = await service.calibration.calibrate("colours", cal_labels, cal_images, request)
        assert view.calibration is not None and view.calibration_problem is None
        assert view.calibration.basis.towers == {"image": FP32_CPU}  # text tower: in the arrays
        torch_scores, on_torch = await _scored(service, tiny_engine)
        assert sum(a is True for a in on_torch) == view.calibration.n_accepted

        onnx = _engine(tiny_engine, tmp_path / "cache", "onnxruntime")
        await onnx.start()
        served = LabelSetService(DirectoryStore(tmp_path / "store"), onnx, make_settings(tmp_path))
        await served.repository.load_all()
        assert served.repository.get_view("colours").calibration_problem is None  # fp32 → fp32: covered
        # ... and it holds on the calibration images: the scores move by far less than the bound, so only
        # an image whose score IS the threshold (a conformal threshold is one of the calibration scores)
        # may land on the other side of it; every other decision is the same.
        onnx_scores, on_onnx = await _scored(served, onnx)
        assert np.abs(onnx_scores - torch_scores).max() < SCORE_PARITY
        at_threshold = np.abs(torch_scores - view.calibration.threshold) < SCORE_PARITY
        assert all(a == b for a, b, tie in zip(on_onnx, on_torch, at_threshold, strict=True) if not tie)
        assert at_threshold.sum() <= 1
        await onnx.stop()

        int8 = _engine(
            tiny_engine,
            tmp_path / "cache",
            "onnxruntime",
            precision="int8",
            calibration_dir=str(_int8_images(tmp_path / "int8-images")),
        )
        assert int8.towers["image"].precision == "int8"
        await int8.start()
        quantized = LabelSetService(DirectoryStore(tmp_path / "store"), int8, make_settings(tmp_path))
        await quantized.repository.load_all()
        problem = quantized.repository.get_view("colours").calibration_problem
        assert problem is not None and "int8" in problem and "parity bound" in problem
        decisions = await _decisions(quantized, int8)
        assert set(decisions) == {None}  # no decision is pretended
        await int8.stop()

    asyncio.run(scenario())


def _record(**basis: object) -> CalibrationRecord:
    fields = {
        "arrays_sha256": "a" * 64,
        "logit_scale": 10.0,
        "logit_bias": 0.0,
        "towers": {"image": FP32_CPU},
    }
    fields.update(basis)
    return CalibrationRecord(
        threshold=0.5,
        rule="target_coverage",
        target=0.8,
        guarantee="…",
        coverage=0.8,
        risk=0.1,
        n=10,
        n_accepted=8,
        score="trustvlm",
        alpha=1.0,
        visual_temperature=0.01,
        label_set_version=2,
        basis=CalibrationBasis(**fields),  # type: ignore[arg-type]
    )


def test_the_rule_names_what_changed() -> None:
    record = _record()
    assert record.basis is not None
    same = record.basis
    settings = {"alpha": 1.0, "visual_temperature": 0.01, "trust_score": "trustvlm"}
    assert calibration_problem(record, same, **settings) is None  # type: ignore[arg-type]
    moved = same.model_copy(update={"arrays_sha256": "b" * 64})
    assert "prototypes" in calibration_problem(record, moved, **settings)  # type: ignore[arg-type,operator]
    assert "α" in calibration_problem(record, same, **{**settings, "alpha": 2.0})  # type: ignore[arg-type,operator]
    scaled = same.model_copy(update={"logit_scale": 11.0})
    assert "logit scale" in calibration_problem(record, scaled, **settings)  # type: ignore[arg-type,operator]
    legacy = record.model_copy(update={"basis": None})
    assert "before" in calibration_problem(legacy, same, **settings)  # type: ignore[arg-type,operator]


@pytest.mark.parametrize(
    ("now", "covered"),
    [
        (FP32_CPU, True),
        (FP32_CPU.model_copy(update={"runtime": "onnxruntime"}), True),
        (FP32_CPU.model_copy(update={"runtime": "openvino"}), True),
        (
            FP32_CPU.model_copy(update={"runtime": "openvino", "precision": "bf16", "dtype": "bfloat16"}),
            False,
        ),
        (FP32_CPU.model_copy(update={"runtime": "onnxruntime", "precision": "int8", "dtype": "int8"}), False),
        (FP32_CPU.model_copy(update={"device": "cuda", "dtype": "float16"}), False),
        (FP32_CPU.model_copy(update={"device": "cuda"}), False),
    ],
)
def test_only_fp32_on_the_cpu_is_covered_across_runtimes(now: TowerNumerics, covered: bool) -> None:
    assert (numerics_problem({"image": FP32_CPU}, {"image": now}) is None) is covered
    assert numerics_problem({"image": FP32_CPU}, {"image": FP32_CPU, "aux-image": FP32_CPU}) is not None


def test_records_stored_before_n_accepted_was_kept_still_load() -> None:
    stored = _record().model_dump(mode="json")
    del stored["n_accepted"], stored["basis"], stored["tuning"]
    again = CalibrationRecord.model_validate(stored)
    assert again.n_accepted == 8 and again.basis is None


def test_the_arrays_digest_sees_any_change_of_a_prototype() -> None:
    rng = np.random.default_rng(0)
    text, protos = rng.standard_normal((3, 4)), rng.standard_normal((3, 5))
    has = np.array([True, True, False])
    digest = arrays_digest(text, protos, has)
    assert arrays_digest(text.astype(np.float32), protos.astype(np.float32), has) == digest
    nudged = protos.copy()
    nudged[1, 2] = np.nextafter(np.float32(nudged[1, 2]), np.float32(np.inf))
    assert arrays_digest(text, nudged.astype(np.float32), has) != digest
    assert arrays_digest(text, protos, ~has) != digest
    record = _record()
    assert CalibrationRecord.model_validate_json(record.model_dump_json()) == record
