"""The label-set service's parts (repository, support images, calibration, adaptation) on a real (tiny,
random-weight) engine and a real DirectoryStore."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.api.errors import http_status
from app.errors import TrustserveError
from app.labelsets.adaptation import adapted_prototypes, top_per_class
from app.labelsets.calibration import CalibrationRequest
from app.labelsets.index import _ONE_BUILD_AT_A_TIME, IndexParams
from app.labelsets.models import AdaptationConfig
from app.labelsets.service import LabelSetService
from app.labelsets.store import DirectoryStore
from app.trust.prototypes import PrototypeBank
from tests.labelsets.conftest import colour_image, make_settings

LABELS = ["red", "green", "blue"]


async def service_for(store_dir: Path, engine) -> LabelSetService:
    """A service on a fresh store handle; (re)starts the engine's batcher on this event loop."""
    await engine.start()
    service = LabelSetService(
        store=DirectoryStore(store_dir), engine=engine, settings=make_settings(store_dir)
    )
    await service.repository.load_all()
    return service


async def _populated(tmp_path: Path, engine, shots: int = 4) -> LabelSetService:
    service = await service_for(tmp_path, engine)
    await service.repository.create("colours", LABELS)
    labels = [label for label in LABELS for _ in range(shots)]
    images = [colour_image(label, seed=i) for i, label in enumerate(labels)]
    await service.support.add("colours", labels, images)
    return service


def test_create_add_support_and_reload_identically(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine)
        view = service.repository.get_view("colours")
        assert view.version == 2
        assert view.support_counts.tolist() == [4, 4, 4]
        assert view.has_prototype.all()
        np.testing.assert_allclose(np.linalg.norm(view.prototypes, axis=1), 1.0, rtol=1e-5)
        # prototype == normalised mean of the support features (TrustVLM's P_c)
        images = [colour_image("red", seed=i) for i in range(4)]
        feats = (await tiny_engine.encode_images(images)).aux_features
        expected = feats.mean(0) / np.linalg.norm(feats.mean(0))
        np.testing.assert_allclose(view.prototypes[0], expected, atol=1e-5)
        sims, ids = view.index.search(expected[None, :].astype(np.float32), 1)
        assert ids[0, 0] == 0 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)

        reloaded = LabelSetService(DirectoryStore(tmp_path), tiny_engine, make_settings(tmp_path))
        report = await reloaded.repository.load_all()
        assert report.loaded == ["colours"] and report.failed == {}
        again = reloaded.repository.get_view("colours")
        assert again.version == view.version
        np.testing.assert_array_equal(again.prototypes, view.prototypes)
        np.testing.assert_array_equal(again.text_embeddings, view.text_embeddings)

    asyncio.run(scenario())


def test_errors_unknown_duplicate_bad_class(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=1)
        with pytest.raises(TrustserveError) as err:
            service.repository.get_view("nope")
        assert http_status(err.value) == 404
        with pytest.raises(TrustserveError) as err:
            await service.repository.create("colours", ["x"])
        assert http_status(err.value) == 409
        with pytest.raises(TrustserveError) as err:
            await service.repository.create("Bad Id!", ["x"])
        assert http_status(err.value) == 422
        with pytest.raises(TrustserveError) as err:
            await service.repository.create("dupes", ["a", "a"])
        assert http_status(err.value) == 422 and "duplicates" in err.value.message
        with pytest.raises(TrustserveError) as err:
            await service.support.add("colours", ["purple"], [colour_image("red")])
        assert http_status(err.value) == 422 and "purple" in err.value.message
        assert service.repository.get_view("colours").version == 2  # nothing written
        with pytest.raises(TrustserveError) as err:
            await service.support.add("colours", ["red"], [colour_image("red")], expected_version=1)
        assert http_status(err.value) == 409

    asyncio.run(scenario())


def test_mixed_size_support_images_equal_one_by_one(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await service_for(tmp_path, tiny_engine)
        await service.repository.create("a", LABELS)
        await service.repository.create("b", LABELS)
        images = [colour_image("red", 1, (20, 30)), colour_image("red", 2, (300, 90))]
        await service.support.add("a", ["red", "red"], images)
        for image in images:
            await service.support.add("b", ["red"], [image])
        np.testing.assert_allclose(
            service.repository.get_view("a").prototypes,
            service.repository.get_view("b").prototypes,
            atol=1e-6,
        )

    asyncio.run(scenario())


def test_concurrent_requests_lose_no_update(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await service_for(tmp_path, tiny_engine)
        await service.repository.create("colours", LABELS)
        jobs = [service.support.add("colours", [LABELS[i % 3]], [colour_image(LABELS[i % 3], i)])
                for i in range(12)]  # fmt: skip
        await asyncio.gather(*jobs)
        view = service.repository.get_view("colours")
        assert view.version == 13
        assert view.support_counts.tolist() == [4, 4, 4]
        stored = DirectoryStore(tmp_path).load("colours")
        assert stored.arrays["prototype_counts"].tolist() == [4, 4, 4]

    asyncio.run(scenario())


def test_remove_and_add_classes(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=2)
        before = service.repository.get_view("colours")
        view = await service.repository.remove_class("colours", "green")
        assert view.labels == ("red", "blue")
        np.testing.assert_array_equal(view.prototypes, before.prototypes[[0, 2]])
        np.testing.assert_array_equal(view.text_embeddings, before.text_embeddings[[0, 2]])
        view = await service.repository.add_classes("colours", ["grey"])
        assert view.labels == ("red", "blue", "grey") and view.has_prototype.tolist() == [True, True, False]
        with pytest.raises(TrustserveError) as err:
            await service.repository.remove_class("colours", "green")
        assert http_status(err.value) == 404

    asyncio.run(scenario())


def test_calibrate_target_coverage_and_decisions(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine)
        labels = [LABELS[i % 3] for i in range(60)]
        images = [colour_image(label, seed=100 + i) for i, label in enumerate(labels)]
        request = CalibrationRequest(rule="target_coverage", target_coverage=0.8)
        view = await service.calibration.calibrate("colours", labels, images, request)
        cal = view.calibration
        assert cal is not None and cal.rule == "target_coverage" and cal.n == 60
        assert cal.coverage >= 0.8 and cal.label_set_version == view.version == 3
        assert view.decide(cal.threshold).accept is True
        assert view.decide(cal.threshold - 1e-6).accept is False
        assert view.decide(float("nan")).accept is False
        # any change to the prototypes drops the calibration: it would no longer hold
        view, _ = await service.support.add("colours", ["red"], [colour_image("red", 999)])
        assert view.calibration is None
        decision = view.decide(5.0)
        assert decision.calibrated is False and decision.accept is None

    asyncio.run(scenario())


def test_calibrate_target_risk_too_small_explains_minimum(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=1)
        labels = ["red"] * 20
        images = [colour_image("red", i) for i in range(20)]
        request = CalibrationRequest(rule="target_risk", target_risk=0.1, delta=0.05)
        with pytest.raises(TrustserveError) as err:
            await service.calibration.calibrate("colours", labels, images, request)
        assert http_status(err.value) == 422 and err.value.code == "calibration_set_too_small"
        assert err.value.details["min_samples"] > 20
        assert str(err.value.details["min_samples"]) in err.value.message

    asyncio.run(scenario())


def test_calibrate_target_risk_with_tuning(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine)
        labels = [LABELS[i % 3] for i in range(240)]
        images = [colour_image(label, seed=500 + i) for i, label in enumerate(labels)]
        request = CalibrationRequest(rule="target_risk", target_risk=0.2, delta=0.1, tune=True)
        view = await service.calibration.calibrate("colours", labels, images, request)
        cal = view.calibration
        # the selection sees a class-stratified half, the threshold the other half (disjoint: SGR at δ)
        assert cal.n == 120 and cal.n_tuning == 120 and cal.selection is not None
        chosen = cal.selection
        assert chosen.evidence == "calibration" and chosen.candidates_compared == 6
        assert chosen.selection is not None and chosen.selection.n == 120
        assert "among 6 candidates on 120 other calibration images, disjoint" in cal.guarantee
        assert "With probability ≥ 0.9" in cal.guarantee
        assert cal.conformal is not None and cal.conformal.n == 120 and "disjoint" in cal.conformal.guarantee
        assert cal.risk_upper_bound <= 0.2 and cal.delta == 0.1
        assert view.alpha == cal.alpha == chosen.alpha and view.selection_evidence == "calibration"
        assert view.visual_temperature == 0.01  # selection never touches T_v

    asyncio.run(scenario())


def test_corrupt_entry_reported_others_served(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=1)
        await service.repository.create("other", ["a", "b"])
        (tmp_path / "label-sets" / "colours" / "v00000002.arrays.safetensors").write_bytes(b"broken")
        fresh = LabelSetService(DirectoryStore(tmp_path), tiny_engine, make_settings(tmp_path))
        report = await fresh.repository.load_all()
        assert report.loaded == ["other"]
        assert "checksum mismatch" in report.failed["colours"]
        with pytest.raises(TrustserveError) as err:
            fresh.repository.get_view("colours")
        assert http_status(err.value) == 503
        await fresh.repository.delete("colours")
        assert fresh.repository.unavailable() == {}

    asyncio.run(scenario())


def test_top_per_class_keeps_highest_scores() -> None:
    classes = np.array([0, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.7, 0.95, 0.1, 0.6])
    assert top_per_class(classes, scores, 2).tolist() == [0, 2, 3, 4]


def test_adapted_prototypes_cannot_drift_without_bound() -> None:
    """Adversarial cache (features opposite to the support mean, as many as allowed): the prototype stays
    within cos ≥ 1 − 2·max_weight of the support prototype."""
    rng = np.random.default_rng(0)
    support = rng.standard_normal((2, 8))
    bank = PrototypeBank.from_features(support, np.array([0, 1]), 2)
    sums, counts = bank.to_arrays()["sums"], bank.to_arrays()["counts"]
    for max_weight in (0.1, 0.3, 0.49):
        hostile = np.repeat(-support[:1] * 100, 1000, axis=0)
        adapted = adapted_prototypes(sums, counts, np.zeros(1000, np.int64), hostile, max_weight)
        cos = float(adapted[0] @ bank.prototypes()[0])
        assert cos >= 1 - 2 * max_weight - 1e-6
        np.testing.assert_allclose(adapted[1], bank.prototypes()[1], atol=1e-6)  # untouched class


def test_observe_fills_bounded_cache(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=2)
        config = AdaptationConfig(enabled=True, min_score=0.0, max_per_class=3, max_weight=0.3)
        view = await service.repository.update("colours", adaptation=config)
        for round_ in range(3):
            images = [colour_image("red", 1000 + round_ * 10 + i) for i in range(5)]
            feats = (await tiny_engine.encode_images(images)).aux_features
            view = service.repository.get_view("colours")
            await service.adaptation.observe(
                "colours", view.version, feats, np.zeros(5, np.int64), np.linspace(1, 2, 5)
            )
        view = service.repository.get_view("colours")
        stored = DirectoryStore(tmp_path).load("colours")
        assert stored.arrays["cache_class"].tolist() == [0, 0, 0]
        assert view.adapted and view.support_counts.tolist() == [2, 2, 2]
        assert service.repository.get_view("colours").decide(1.0).calibrated is False

    asyncio.run(scenario())


def test_view_topk_helpers_match_exact_search(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=2)
        view = service.repository.get_view("colours")
        feats = (await tiny_engine.encode_images([colour_image("blue", 77)])).aux_features
        topk = view.prototype_topk(feats, k=2)
        exact = (feats / np.linalg.norm(feats)) @ view.prototypes.T
        assert topk.indices[0].tolist() == np.argsort(-exact[0])[:2].tolist()
        np.testing.assert_allclose(topk.sims[0], np.sort(exact[0])[::-1][:2], atol=1e-5)

    asyncio.run(scenario())


def test_index_hnsw_threshold_setting_switches_large_label_sets_to_hnsw(tmp_path: Path, tiny_engine) -> None:
    """``TRUSTSERVE_INDEX_HNSW_THRESHOLD`` is a real setting: lowered, a small set takes the large-set
    path (HNSW prototypes), also after a reload."""

    async def scenario() -> None:
        await tiny_engine.start()
        settings = make_settings(tmp_path, index_hnsw_threshold=2)
        service = LabelSetService(DirectoryStore(tmp_path), tiny_engine, settings)
        assert service.repository.index_params == IndexParams(hnsw_threshold=2)
        await service.repository.create("many", [f"class {i}" for i in range(20)])
        with _ONE_BUILD_AT_A_TIME:  # the write crossing the threshold does not wait for the graph
            view, _ = await service.support.add("many", ["class 0", "class 5"], [colour_image("red", 1)] * 2)
            assert view.index.kind == "flat" and not view.index.pending.done()  # exact meanwhile
        view.index.wait_built(30)
        assert view.index.kind == "hnsw" and view.index.ntotal == 2
        reloaded = LabelSetService(DirectoryStore(tmp_path), tiny_engine, settings)
        await reloaded.repository.load_all()
        again = reloaded.repository.get_view("many").index
        again.wait_built(30)  # the stored graph, or rebuilt in the background
        assert again.kind == "hnsw"
        default = LabelSetService(DirectoryStore(tmp_path), tiny_engine, make_settings(tmp_path))
        await default.repository.load_all()
        assert default.repository.get_view("many").index.kind == "flat"  # the setting decides the kind

    asyncio.run(scenario())


def test_unknown_ids_leave_no_lock_behind(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await service_for(tmp_path, tiny_engine)
        for i in range(50):
            with pytest.raises(TrustserveError) as err:
                await service.repository.delete(f"nope-{i}-" + "x" * 5000)
            assert http_status(err.value) == 404 and len(err.value.message) < 200
            with pytest.raises(TrustserveError):
                await service.repository.update(f"nope-{i}", description="x")
        assert len(service.repository._locks) == 0

    asyncio.run(scenario())


def test_calibration_is_not_starved_by_concurrent_writers(tmp_path: Path, tiny_engine) -> None:
    """Writers change the label set while calibration images are encoded: calibration still commits, on
    the version it is stored with (it no longer fails with 'changed while calibrating')."""

    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=2)
        labels = [LABELS[i % 3] for i in range(90)]
        images = [colour_image(label, seed=700 + i) for i, label in enumerate(labels)]
        request = CalibrationRequest(rule="target_coverage", target_coverage=0.8)
        stop = asyncio.Event()

        async def writer() -> int:
            writes = 0
            while not stop.is_set():
                await service.repository.update("colours", description=f"edit {writes}")
                writes += 1
                await asyncio.sleep(0)
            return writes

        for _ in range(3):
            task = asyncio.create_task(writer())
            view = await service.calibration.calibrate("colours", labels, images, request)
            stop.set()
            assert await task > 0
            stop.clear()
            assert view.calibration is not None and view.calibration.label_set_version == view.version
            assert service.repository.get_view("colours").calibration is not None  # a description keeps it

    asyncio.run(scenario())


def test_stored_entry_with_a_foreign_embedding_width_is_unavailable_not_a_500(
    tmp_path: Path, tiny_engine
) -> None:
    async def scenario() -> None:
        await _populated(tmp_path, tiny_engine, shots=1)
        store = DirectoryStore(tmp_path)
        record = store.load("colours")
        record.arrays["text_embeddings"] = record.arrays["text_embeddings"][:, :-1].copy()
        record.meta = record.meta.model_copy(
            update={"version": 3, "embedding_dim": record.meta.embedding_dim - 1}
        )
        store.save(record, expected_version=2)
        fresh = LabelSetService(DirectoryStore(tmp_path), tiny_engine, make_settings(tmp_path))
        report = await fresh.repository.load_all()
        assert "colours" in report.failed and "dimension" in report.failed["colours"]
        with pytest.raises(TrustserveError) as err:
            fresh.repository.get_view("colours")
        assert http_status(err.value) == 503

    asyncio.run(scenario())


def test_added_classes_may_not_repeat_existing_ones_up_to_case(tmp_path: Path, tiny_engine) -> None:
    async def scenario() -> None:
        service = await _populated(tmp_path, tiny_engine, shots=1)
        with pytest.raises(TrustserveError) as err:
            await service.repository.add_classes("colours", ["RED"])
        assert http_status(err.value) == 409
        with pytest.raises(TrustserveError) as err:
            await service.repository.add_classes("colours", ["../../victim"])
        assert http_status(err.value) == 422

    asyncio.run(scenario())
