"""Text encoding never holds the model thread for long: prompts missing from the cache are bounded per
request and encoded in short chunks, one at a time across requests, so image batches run in between."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.config import Settings
from app.engine import engine as engine_module
from app.engine.engine import ClassificationEngine
from app.errors import InvalidInput
from app.vlm.backends.open_clip_backend import create_open_clip_backend
from app.vlm.presets import ModelPreset
from tests.support.runtime import make_context
from tests.support.tiny_model import TINY_ARCH, register_tiny_arch

SECONDS_PER_PROMPT = 0.002  # the tiny text tower, slowed down to a real model's pace


class SlowTexts:
    """The tiny open_clip backend with a text tower that takes ``SECONDS_PER_PROMPT`` per prompt."""

    def __init__(self, backend) -> None:  # type: ignore[no-untyped-def]
        self._backend = backend
        self.text_calls: list[int] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._backend, name)

    def encode_texts(self, prompts: list[str]) -> np.ndarray:
        self.text_calls.append(len(prompts))
        time.sleep(SECONDS_PER_PROMPT * len(prompts))
        return self._backend.encode_texts(prompts)


@pytest.fixture()
def engine(tmp_path: Path) -> ClassificationEngine:
    register_tiny_arch(tmp_path)
    torch.manual_seed(0)
    backend = create_open_clip_backend(make_context(tmp_path / "export-cache"), architecture=TINY_ARCH)
    preset = ModelPreset(name="tiny-slow", backend="open_clip", args={"architecture": TINY_ARCH})
    settings = Settings(
        store_dir=tmp_path, warmup=False, device="cpu", max_wait_ms=1.0, max_new_prompts_per_request=600
    )
    return ClassificationEngine(preset, SlowTexts(backend), None, settings)  # type: ignore[arg-type]


def test_image_batches_run_between_text_chunks(engine: ClassificationEngine) -> None:
    labels = [f"label number {i}" for i in range(500)]  # 500 new prompts: about 1 s of text work

    async def scenario() -> tuple[float, float]:
        await engine.start()
        started = time.perf_counter()
        text = asyncio.create_task(engine.text_embeddings(labels, ["a photo of a {}."]))
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await engine.encode_images([Image.new("RGB", (40, 40), (200, 30, 30))])
        image_latency = time.perf_counter() - t0
        await text
        await engine.stop()
        return image_latency, time.perf_counter() - started

    image_latency, text_total = asyncio.run(scenario())
    assert text_total >= 500 * SECONDS_PER_PROMPT
    assert image_latency < 0.3 * text_total, (image_latency, text_total)
    calls = engine.backend.text_calls  # type: ignore[attr-defined]
    assert sum(calls) == 500 and len(calls) > 4  # many short jobs, not one long one
    assert max(calls) * SECONDS_PER_PROMPT <= 4 * engine_module.TEXT_SLICE_S


def test_too_many_new_prompts_are_refused_before_encoding(engine: ClassificationEngine) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidInput) as err:
            await engine.text_embeddings([f"l{i}" for i in range(301)], ["a {}.", "the {}."])
        assert err.value.code == "too_many_prompts"
        # cached prompts do not count: 300 new now, then the same 300 again plus 300 more
        await engine.text_embeddings([f"l{i}" for i in range(300)], ["a {}."])
        await engine.text_embeddings([f"l{i}" for i in range(600)], ["a {}."])

    asyncio.run(scenario())
    assert sum(engine.backend.text_calls) == 600  # type: ignore[attr-defined]
