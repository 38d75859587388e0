"""Test-time prototype growth (opt-in, TDA-style) on a shifted split, with the real offline model.

Support: 2 Fashion-MNIST train images per class (two seeded draws), inverted (the dataset default,
black-on-white). Stream and evaluation: Fashion-MNIST test images *not* inverted (white-on-black), a
polarity shift. The stream reaches the label set in requests of 25 images; each class keeps its 16
highest-scoring predictions, their share of a prototype capped at 30 %. TrustVLM*'s refined accuracy on
200 held-out shifted images is compared before and after.

Measured while choosing this setup (same data, the same functions, features cached): the cache helps
most when support is scarce — 1/2/4-shot: +3 to +8.5 points on the polarity shift, +1 to +5 on clean
test images — but with 16 shots the gain is within noise (0.750 -> 0.755 here) and on a contrast 0.6 +
noise shift it is mixed (-3 to +3.5 points). Hence opt-in, bounded, and reported as such.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.engine.engine import ClassificationEngine
from app.engine.scoring import score_batch
from app.labelsets.models import AdaptationConfig
from app.labelsets.service import LabelSetService
from app.labelsets.store import DirectoryStore
from app.labelsets.support import encode
from app.trust.datasets import load_dataset, load_support

SHOTS = 2
SUPPORT_SEEDS = (0, 1)
N_STREAM = 200
N_EVAL = 200
REQUEST = 25


def refined_accuracy(service: LabelSetService, label_set: str, engine, emb, feats, labels) -> float:  # type: ignore[no-untyped-def]
    view = service.repository.get_view(label_set)
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
    async def scenario() -> list[dict[str, float]]:
        engine = await asyncio.to_thread(ClassificationEngine.load, Settings(warmup=False, device="cpu"))
        settings = Settings(warmup=False, device="cpu", store_dir=tmp_path, request_timeout_s=600)
        engine.settings = settings
        await engine.start()
        service = LabelSetService(DirectoryStore(tmp_path), engine, settings)
        await service.repository.load_all()
        pool = load_dataset("fashion-mnist", "test", limit=N_STREAM + N_EVAL, seed=1, invert=False)
        emb, feats = await encode(engine, list(pool.images))
        stream, held_out = np.arange(N_STREAM), np.arange(N_STREAM, N_STREAM + N_EVAL)
        results = []
        for seed in SUPPORT_SEEDS:
            label_set = f"fashion-{seed}"
            support = load_support("fashion-mnist", SHOTS, seed=seed)
            names = support.class_names
            await service.repository.create(label_set, names, trust_score="trustvlm_star")
            await service.support.add(label_set, [names[i] for i in support.labels], list(support.images))
            before = service.repository.get_view(label_set).prototypes.copy()
            acc_before = refined_accuracy(service, label_set, engine, emb[held_out], feats[held_out],
                                          pool.labels[held_out])  # fmt: skip
            config = AdaptationConfig(enabled=True, min_score=0.0, max_per_class=16, max_weight=0.3)
            await service.repository.update(label_set, adaptation=config)
            for start in range(0, N_STREAM, REQUEST):
                part = stream[start : start + REQUEST]
                view = service.repository.get_view(label_set)
                s = score_batch(emb[part], feats[part], np.asarray(view.text_embeddings),
                                logit_scale=engine.logit_scale, prototypes=np.asarray(view.prototypes),
                                has_prototype=np.asarray(view.has_prototype), alpha=view.alpha,
                                visual_temperature=view.visual_temperature)  # fmt: skip
                await service.adaptation.observe(label_set, view.version, feats[part], s.refined_predictions,
                                      s.scores["trustvlm_star"])  # fmt: skip
            acc_after = refined_accuracy(service, label_set, engine, emb[held_out], feats[held_out],
                                         pool.labels[held_out])  # fmt: skip
            cos = np.sum(before * service.repository.get_view(label_set).prototypes, axis=1)
            cached = np.bincount(DirectoryStore(tmp_path).load(label_set).arrays["cache_class"], minlength=10)
            results.append({"seed": seed, "before": acc_before, "after": acc_after,
                            "min_cos": float(cos.min()), "max_cached": int(cached.max()),
                            "cached": int(cached.sum())})  # fmt: skip
        await engine.stop()
        return results

    results = asyncio.run(scenario())
    print("adaptation on the shifted split:", results)
    assert np.mean([r["after"] for r in results]) > np.mean([r["before"] for r in results])
    for r in results:
        assert r["max_cached"] <= 16
        assert r["min_cos"] >= 1 - 2 * 0.3 - 1e-6
