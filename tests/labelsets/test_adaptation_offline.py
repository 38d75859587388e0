"""Test-time prototype growth (opt-in, TDA-style) on a shifted split, with the real offline model.

Support images: clean Fashion-MNIST train images. Test stream and evaluation images: Fashion-MNIST test
images under a covariate shift (blur + lowered contrast + noise). Confidently accepted stream images
enter each class's bounded cache; TrustVLM*'s refined accuracy on held-out shifted images is compared
before and after. The cache is bounded per class and its weight capped, so the prototypes stay close
to the support prototypes however long the stream.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.engine.scoring import score_batch
from app.labelsets.models import AdaptationConfig
from app.labelsets.service import LabelSetService
from app.labelsets.store import DirectoryStore
from app.trust.datasets import load_dataset, load_support

SHOTS = 8
N_STREAM = 300
N_EVAL = 300


def shift(image: Image.Image, seed: int) -> Image.Image:
    """Covariate shift: blur, halve the contrast, add pixel noise."""
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    image = ImageEnhance.Contrast(image).enhance(0.5)
    noise = np.random.default_rng(seed).normal(0, 18, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def refined_accuracy(service: LabelSetService, engine, emb: np.ndarray, feats: np.ndarray, labels) -> float:  # type: ignore[no-untyped-def]
    view = service.get_view("fashion")
    scored = score_batch(
        emb,
        feats,
        np.asarray(view.text_embeddings),
        logit_scale=engine.logit_scale,
        prototypes=np.asarray(view.prototypes),
        has_prototype=np.asarray(view.has_prototype),
        alpha=view.alpha,
        visual_temperature=view.visual_temperature,
    )
    return float(np.mean(scored.refined_predictions == labels))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_prototype_cache_helps_on_shifted_split_and_stays_bounded(tmp_path: Path) -> None:
    async def scenario() -> dict[str, float]:
        engine = await asyncio.to_thread(ClassificationEngine.load, Settings(warmup=False, device="cpu"))
        settings = Settings(warmup=False, device="cpu", store_dir=tmp_path, request_timeout_s=600)
        engine.settings = settings
        await engine.start()
        service = LabelSetService(DirectoryStore(tmp_path), engine, settings)
        await service.load_all()
        support = load_support("fashion-mnist", SHOTS, seed=0)
        names = support.class_names
        await service.create("fashion", names, trust_score="trustvlm_star")
        await service.add_support_images("fashion", [names[i] for i in support.labels], list(support.images))
        before = service.get_view("fashion").prototypes.copy()

        pool = load_dataset("fashion-mnist", "test", limit=N_STREAM + N_EVAL, seed=1)
        shifted = [shift(im, i) for i, im in enumerate(pool.images)]
        emb, feats = await service.encode(shifted)
        stream, held_out = np.arange(N_STREAM), np.arange(N_STREAM, N_STREAM + N_EVAL)
        labels = pool.labels[held_out]
        acc_before = refined_accuracy(service, engine, emb[held_out], feats[held_out], labels)

        # the top quarter of TrustVLM* scores on the stream counts as "very high confidence"
        view = service.get_view("fashion")
        scored = score_batch(emb[stream], feats[stream], np.asarray(view.text_embeddings),
                             logit_scale=engine.logit_scale, prototypes=np.asarray(view.prototypes),
                             has_prototype=np.asarray(view.has_prototype), alpha=view.alpha,
                             visual_temperature=view.visual_temperature)  # fmt: skip
        min_score = float(np.quantile(scored.scores["trustvlm_star"], 0.75))
        config = AdaptationConfig(enabled=True, min_score=min_score, max_per_class=16, max_weight=0.3)
        await service.update("fashion", adaptation=config)
        for start in range(0, N_STREAM, 25):
            part = stream[start : start + 25]
            view = service.get_view("fashion")
            s = score_batch(emb[part], feats[part], np.asarray(view.text_embeddings),
                            logit_scale=engine.logit_scale, prototypes=np.asarray(view.prototypes),
                            has_prototype=np.asarray(view.has_prototype), alpha=view.alpha,
                            visual_temperature=view.visual_temperature)  # fmt: skip
            await service.observe("fashion", view.version, feats[part], s.refined_predictions,
                                  s.scores["trustvlm_star"])  # fmt: skip
        acc_after = refined_accuracy(service, engine, emb[held_out], feats[held_out], labels)
        after = service.get_view("fashion").prototypes
        cos = np.sum(before * after, axis=1)
        cached = np.bincount(DirectoryStore(tmp_path).load("fashion").arrays["cache_class"], minlength=10)
        await engine.stop()
        return {"before": acc_before, "after": acc_after, "min_cos": float(cos.min()),
                "max_cached": int(cached.max()), "cached": int(cached.sum())}  # fmt: skip

    result = asyncio.run(scenario())
    print("adaptation on the shifted split:", result)
    assert result["after"] > result["before"]
    assert result["max_cached"] <= 16
    assert result["min_cos"] >= 1 - 2 * 0.3 - 1e-6
