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


def test_open_clip_vit_b_32_runs_in_fp16_on_cuda() -> None:
    from app.vlm.base import create_backend

    backend = create_backend(
        "open_clip", device="auto", dtype="auto", architecture="ViT-B-32", pretrained=None
    )
    assert backend.device.type == "cuda" and backend.dtype == torch.float16
    pixels = torch.stack([backend.preprocess(Image.new("RGB", (300, 200), (i, 0, 0))) for i in range(64)])
    out = backend.encode_images(pixels)
    assert out.embeddings.shape[0] == 64 and out.embeddings.dtype == torch.float32
    assert torch.isfinite(out.embeddings).all()
    assert torch.allclose(out.embeddings.norm(dim=1), torch.ones(64), atol=1e-2)


def test_engine_on_cuda_batches_and_scores(settings_factory) -> None:  # type: ignore[no-untyped-def]
    from app.engine.engine import ClassificationEngine

    engine = ClassificationEngine.load(settings_factory(device="cuda", max_batch_size=64))
    assert engine.backend.device.type == "cuda"

    async def run() -> np.ndarray:
        await engine.start()
        images = [Image.new("RGB", (64, 64), (i, i, 0)) for i in range(100)]
        encoded = await engine.encode_images(images)
        await engine.stop()
        return encoded.embeddings

    emb = asyncio.run(run())
    assert emb.shape[0] == 100 and np.isfinite(emb).all()
