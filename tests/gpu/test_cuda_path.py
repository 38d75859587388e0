"""CUDA path: fp16 weights, channels_last, batched inference, the real server engine on the GPU.
Skipped without CUDA (run with ``pytest -m gpu``)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_open_clip_vit_b_32_runs_in_fp16_on_cuda(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.vlm.loading import load_preset

    loaded = load_preset("random-vit-b-32", device="auto", runtime="torch", export_cache_dir=tmp_path)
    backend = loaded.backend
    assert loaded.device == "cuda" and loaded.towers["image"].dtype == "float16"
    pixels = np.stack([backend.preprocess(Image.new("RGB", (300, 200), (i, 0, 0))) for i in range(64)])
    out = backend.encode_images(pixels)
    assert out.embeddings.shape[0] == 64 and out.embeddings.dtype == np.float32
    assert np.isfinite(out.embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-2)


def test_auto_keeps_torch_on_cuda_unless_onnxruntime_measures_faster(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.vlm.loading import load_preset

    loaded = load_preset("random-vit-b-32", device="cuda", runtime="auto", export_cache_dir=tmp_path)
    checks = loaded.towers["image"].checks
    assert "torch" in checks and "openvino" not in checks
    fastest = max((r for r in checks if checks[r].get("passed")), key=lambda r: checks[r]["items_per_s"])
    assert loaded.towers["image"].runtime == fastest


def test_engine_on_cuda_batches_and_scores(settings_factory) -> None:  # type: ignore[no-untyped-def]
    from app.engine.engine import ClassificationEngine

    engine = ClassificationEngine.load(settings_factory(device="cuda", max_batch_size=64, runtime="torch"))
    assert engine.device.startswith("cuda")

    async def run() -> np.ndarray:
        await engine.start()
        images = [Image.new("RGB", (64, 64), (i, i, 0)) for i in range(100)]
        encoded = await engine.encode_images(images)
        await engine.stop()
        return encoded.embeddings

    emb = asyncio.run(run())
    assert emb.shape[0] == 100 and np.isfinite(emb).all()
