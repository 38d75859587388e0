"""A label set's self-selection with real parts (issue 14): a real engine (tiny random-weight open_clip),
real encodings under both aspect policies, the stored record, reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import Conflict, InvalidInput
from app.labelsets import support_features
from app.labelsets.calibration import CalibrationRequest
from app.labelsets.service import LabelSetService
from app.labelsets.store import DirectoryStore
from tests.labelsets.conftest import COLOURS, make_settings

LABELS = ["red", "green", "blue"]


def wide_image(name: str, seed: int) -> Image.Image:
    """A 3:1 white canvas with a noisy colour square in its left, middle or right third: a centre crop
    keeps the square only when it is in the middle; letterboxing keeps it always."""
    rng = np.random.default_rng(seed)
    canvas = np.full((32, 96, 3), 255.0)
    third = int(rng.integers(0, 3))
    block = np.array(COLOURS[name], dtype=np.float64) + rng.normal(0, 12, (32, 32, 3))
    canvas[:, 32 * third : 32 * third + 32] = block
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def noise_image(seed: int) -> Image.Image:
    """Pure noise: nothing about the class is in the image space."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))


async def _service(tmp_path: Path, engine) -> LabelSetService:  # type: ignore[no-untyped-def]
    service = LabelSetService(DirectoryStore(tmp_path), engine, make_settings(tmp_path))
    await service.repository.load_all()
    return service


def test_wide_images_pick_letterbox_at_calibrate(tmp_path: Path, tiny_engine) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        service = await _service(tmp_path, tiny_engine)
        await service.repository.create(
            "wide", LABELS, preprocess="auto", selection_mode="auto", trust_score="trustvlm_star"
        )
        labels = [label for label in LABELS for _ in range(12)]
        await service.support.add("wide", labels, [wide_image(c, i) for i, c in enumerate(labels)])
        record = service.repository.entry("wide").record
        assert support_features.kept_policies(record.arrays) == ["crop", "letterbox"]
        assert support_features.kept_count(record.arrays) == 36
        assert record.meta.selection is not None and record.meta.selection.evidence == "support-loo"

        cal_labels = [LABELS[i % 3] for i in range(150)]
        images = [wide_image(c, 1000 + i) for i, c in enumerate(cal_labels)]
        request = CalibrationRequest(rule="target_coverage", target_coverage=0.8)
        view = await service.calibration.calibrate("wide", cal_labels, images, request)
        chosen = view.calibration.selection
        assert chosen is not None and chosen.evidence == "calibration"
        assert chosen.policy == "letterbox" and view.policy == "letterbox"
        assert {p.policy for p in chosen.policies} == {"crop", "letterbox"}
        assert chosen.candidates_compared == 12 and view.calibration_problem is None
        # the prototypes are the letterbox ones, rebuilt from the kept encodings
        sums, counts = support_features.prototype_state(
            service.repository.entry("wide").record.arrays, "letterbox", 3
        )
        assert np.allclose(view.prototypes, sums / np.linalg.norm(sums, axis=1, keepdims=True), atol=1e-5)
        assert counts.tolist() == [12, 12, 12]
        reloaded = await _service(tmp_path, tiny_engine)
        again = reloaded.repository.get_view("wide")
        assert again.policy == "letterbox" and again.calibration_problem is None

    asyncio.run(scenario())


def test_noise_image_space_keeps_msp(tmp_path: Path, tiny_engine) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        service = await _service(tmp_path, tiny_engine)
        await service.repository.create("noise", LABELS, selection_mode="auto", preprocess="crop")
        labels = [LABELS[i % 3] for i in range(120)]
        view, _ = await service.support.add("noise", labels, [noise_image(i) for i in range(120)])
        meta = service.repository.get_meta("noise")
        assert meta.selection is not None and meta.selection.evidence == "support-loo"
        assert meta.selection.alpha == 0.0 and view.alpha == 0.0  # plain MSP
        assert view.selection_evidence == "support-loo" and view.policy == "crop"

    asyncio.run(scenario())


def test_explicit_alpha_is_fixed_and_auto_is_bounded(
    tmp_path: Path, tiny_engine, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        service = await _service(tmp_path, tiny_engine)
        await service.repository.create("fixed", LABELS, alpha=3.0)
        labels = [LABELS[i % 3] for i in range(30)]
        view, _ = await service.support.add("fixed", labels, [noise_image(i) for i in range(30)])
        assert view.alpha == 3.0 and view.selection_evidence == "fixed"
        monkeypatch.setattr(support_features, "MAX_KEPT_SUPPORT_IMAGES", 4)
        await service.repository.create("auto", LABELS, preprocess="auto")
        with pytest.raises(InvalidInput, match="at most 4 support images"):
            await service.support.add("auto", labels[:6], [noise_image(i) for i in range(6)])

    asyncio.run(scenario())


def test_changing_preprocess_uses_kept_encodings_only(tmp_path: Path, tiny_engine) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        service = await _service(tmp_path, tiny_engine)
        repo = service.repository
        await repo.create("both", LABELS, preprocess="auto")
        labels = [LABELS[i % 3] for i in range(9)]
        await service.support.add("both", labels, [wide_image(c, i) for i, c in enumerate(labels)])
        before = repo.get_view("both")
        assert before.policy == "letterbox"  # the support images' leave-one-out evidence chose it
        view = await repo.update("both", preprocess="crop")
        arrays = repo.entry("both").record.arrays
        assert view.policy == "crop" and support_features.kept_policies(arrays) == ["crop"]
        assert view.support_counts.tolist() == [3, 3, 3]
        assert not np.allclose(view.prototypes, before.prototypes)  # rebuilt from the crop encodings
        with pytest.raises(Conflict, match="create a new label set"):
            await repo.update("both", preprocess="auto")  # the letterbox encodings are gone
        await repo.create("empty", LABELS)
        assert (await repo.update("empty", preprocess="letterbox")).policy == "letterbox"

    asyncio.run(scenario())
