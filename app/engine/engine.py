"""The classification engine: owns the VLM backend, the auxiliary image encoder, the prompt-embedding
cache and the dynamic batcher; turns decoded images into embeddings and image-space features.

Pre-process / core / post-process split (as in infinity and text-embeddings-inference): preprocessing runs
in a thread pool, the model in its own single thread fed by the batcher, scoring on the caller's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image

from app.config import Settings
from app.engine.batcher import DynamicBatcher, QueueFullError
from app.engine.images import ImageLimits, decode_image
from app.engine.text_cache import TextEmbeddingCache
from app.observability.metrics import ServiceMetrics
from app.runtime.types import TowerReport
from app.vlm.aux_base import AuxImageEncoder
from app.vlm.base import VLMBackend
from app.vlm.presets import ModelPreset, get_preset

log = logging.getLogger(__name__)

_Pixels = tuple[np.ndarray, np.ndarray | None]
_Encoded = tuple[np.ndarray, np.ndarray]


@dataclass
class EncodedImages:
    """Joint-space embeddings (B, D), L2-normalised, and raw image-space features (B, F)."""

    embeddings: np.ndarray
    aux_features: np.ndarray


class ClassificationEngine:
    """Model compute for classify, label-set registration and calibration."""

    def __init__(
        self,
        preset: ModelPreset,
        backend: VLMBackend,
        aux_encoder: AuxImageEncoder | None,
        settings: Settings,
        metrics: ServiceMetrics | None = None,
        *,
        towers: dict[str, TowerReport] | None = None,
        device: str = "cpu",
    ) -> None:
        self.preset = preset
        self.towers = towers if towers is not None else dict(getattr(backend, "towers", {}))
        self.device = device
        self.backend = backend
        self.aux_encoder = aux_encoder
        self.settings = settings
        self.metrics = metrics or ServiceMetrics()
        self.model_id = preset.name
        self.aux_encoder_id = aux_encoder.name if aux_encoder is not None else f"{preset.name}:own-tower"
        self.logit_scale = float(
            preset.logit_scale if preset.logit_scale is not None else backend.logit_scale
        )
        self.logit_bias = float(backend.logit_bias)
        self.text_cache = TextEmbeddingCache(settings.text_cache_size)
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._preprocess_pool = ThreadPoolExecutor(
            settings.preprocess_workers, thread_name_prefix="preprocess"
        )
        self.batcher: DynamicBatcher[_Pixels, _Encoded] = DynamicBatcher(
            f"{self.model_id}-images",
            self._encode_batch,
            executor=self._model_thread,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            on_batch=self._observe_batch,
            on_queue_wait=lambda s: self.metrics.stage_duration.labels("queue_wait", self.model_id).observe(
                s
            ),
        )
        self.requests_in_pipeline = 0
        self.load_seconds = 0.0
        self.ready = False
        self._health_checked_at = 0.0
        self._health_ok = False

    # construction ------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings, metrics: ServiceMetrics | None = None) -> ClassificationEngine:
        """Build the preset's backend and auxiliary encoder (blocking; call from a thread at start-up)."""
        started = time.perf_counter()
        from app.vlm.loading import load_models

        preset = get_preset(settings.model, settings.models_dir)
        loaded = load_models(preset, settings)
        engine = cls(
            preset,
            loaded.backend,
            loaded.aux_encoder,
            settings,
            metrics,
            towers=loaded.towers,
            device=loaded.device,
        )
        engine.load_seconds = time.perf_counter() - started
        engine.metrics.model_load_seconds.labels(engine.model_id).set(engine.load_seconds)
        for tower, report in engine.towers.items():
            engine.metrics.model_runtime.labels(engine.model_id, tower, report.runtime, report.precision).set(
                1
            )
        log.info(
            "model %s loaded in %.2f s on %s; towers: %s",
            preset.name,
            engine.load_seconds,
            loaded.device,
            ", ".join(f"{t} {r.runtime}/{r.precision} (cache {r.cache})" for t, r in engine.towers.items()),
        )
        return engine

    async def start(self) -> None:
        """Start the batcher; warm up every batch-size bucket so first requests are not slow."""
        self.batcher.start()
        if self.settings.warmup:
            await asyncio.get_running_loop().run_in_executor(self._model_thread, self._warm_up)
        self._health_ok = True
        self._health_checked_at = time.monotonic()
        self.ready = True
        self.metrics.model_ready.labels(self.model_id).set(1)

    async def stop(self) -> None:
        await self.batcher.stop()
        self.ready = False
        self.metrics.model_ready.labels(self.model_id).set(0)
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    def warmup_batch_sizes(self) -> list[int]:
        """Powers of two up to max_batch_size on CUDA (kernels differ per shape); 1 and max on CPU."""
        top = self.settings.max_batch_size
        if self.device.startswith("cuda"):
            sizes, b = [], 1
            while b < top:
                sizes.append(b)
                b *= 2
            return [*sizes, top]
        return sorted({1, min(top, 8)})

    def _warm_up(self) -> None:
        image = Image.new("RGB", (64, 64), (127, 127, 127))
        pixels = self._preprocess(image)
        for size in self.warmup_batch_sizes():
            self._encode_batch([pixels] * size)
        self.backend.encode_texts(["a photo of a warm-up."])

    # admission ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """Bound the requests between arrival and answer (decode + queue + model) to max_queue_size.
        Checked before the body is read, so an overloaded server answers 429 at once."""
        if self.requests_in_pipeline >= self.settings.max_queue_size:
            raise QueueFullError(
                f"{self.model_id} pipeline", self.settings.max_queue_size, self.batcher.retry_after_s()
            )
        self.requests_in_pipeline += 1
        try:
            yield
        finally:
            self.requests_in_pipeline -= 1

    # health --------------------------------------------------------------------------------------
    async def health_check(self, max_age_s: float = 5.0) -> bool:
        """A tiny real inference, cached for ``max_age_s`` (used by /readyz)."""
        if not self.ready:
            return False
        now = time.monotonic()
        if now - self._health_checked_at < max_age_s:
            return self._health_ok
        self._health_checked_at = now
        try:
            image = Image.new("RGB", (32, 32), (90, 120, 200))
            encoded = await asyncio.wait_for(self.encode_images([image]), timeout=10.0)
            self._health_ok = bool(np.isfinite(encoded.embeddings).all())
        except Exception:
            log.exception("health check inference failed")
            self._health_ok = False
        self.metrics.model_ready.labels(self.model_id).set(1 if self._health_ok else 0)
        return self._health_ok

    # images --------------------------------------------------------------------------------------
    def _preprocess(self, image: Image.Image) -> _Pixels:
        vlm_pixels = self.backend.preprocess(image)
        aux_pixels = self.aux_encoder.preprocess(image) if self.aux_encoder is not None else None
        return vlm_pixels, aux_pixels

    def _encode_batch(self, items: list[_Pixels]) -> list[_Encoded]:
        """ONE model call for the whole batch (plus one aux-encoder call when g is a separate model)."""
        pixels = np.stack([vlm for vlm, _ in items])
        encoding = self.backend.encode_images(pixels)
        if self.aux_encoder is not None:
            aux_pixels = np.stack([aux for _, aux in items if aux is not None])
            features = self.aux_encoder.encode(aux_pixels)
        else:
            features = encoding.features if encoding.features is not None else encoding.embeddings
        emb = encoding.embeddings.astype(np.float32, copy=False)
        feats = features.astype(np.float32, copy=False)
        return [(emb[i], feats[i]) for i in range(len(items))]

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.labels(self.model_id).observe(size)
        self.metrics.stage_duration.labels("inference", self.model_id).observe(seconds)
        self.metrics.queue_depth.labels(self.model_id).set(self.batcher.queue_depth)

    async def decode_images(self, files: list[bytes]) -> list[Image.Image]:
        """Decode uploads in the pre-processing pool (off the event loop); 4xx APIError on bad ones."""
        s = self.settings
        limits = ImageLimits(s.max_image_pixels, s.max_image_side, s.min_image_side)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        images = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._preprocess_pool, partial(decode_image, data, limits, name=f"image[{i}]")
                )
                for i, data in enumerate(files)
            )
        )
        self.metrics.stage_duration.labels("decode", self.model_id).observe(time.perf_counter() - started)
        return list(images)

    async def preprocess(self, images: list[Image.Image]) -> list[_Pixels]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        out = await asyncio.gather(
            *(loop.run_in_executor(self._preprocess_pool, self._preprocess, im) for im in images)
        )
        self.metrics.stage_duration.labels("preprocess", self.model_id).observe(time.perf_counter() - started)
        return list(out)

    async def encode_images(self, images: list[Image.Image]) -> EncodedImages:
        """Preprocess in the pool, then embed through the dynamic batcher."""
        if not images:
            raise ValueError("encode_images needs at least one image")
        pixels = await self.preprocess(images)
        self.metrics.queue_depth.labels(self.model_id).set(self.batcher.queue_depth + len(pixels))
        outputs = await self.batcher.submit_many(pixels, timeout_s=self.settings.request_timeout_s)
        return EncodedImages(np.stack([e for e, _ in outputs]), np.stack([f for _, f in outputs]))

    # texts ---------------------------------------------------------------------------------------
    async def text_embeddings(self, labels: list[str], templates: list[str]) -> np.ndarray:
        """(C, D) class embeddings: mean over templates of normalised prompt embeddings, renormalised
        (the prompt-ensembling recipe of Radford et al., 2021)."""
        prompts = [t.format(label) for label in labels for t in templates]
        found, missing = self.text_cache.get_many(self.model_id, prompts)
        if missing:
            loop = asyncio.get_running_loop()
            vectors = await loop.run_in_executor(self._model_thread, self._encode_texts, missing)
            self.text_cache.put_many(self.model_id, missing, vectors)
            found.update(zip(missing, vectors, strict=True))
        per_prompt = np.stack([found[p] for p in prompts]).reshape(len(labels), len(templates), -1)
        mean = per_prompt.mean(axis=1)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)

    def _encode_texts(self, prompts: list[str]) -> np.ndarray:
        chunks = [self.backend.encode_texts(prompts[i : i + 256]) for i in range(0, len(prompts), 256)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def describe(self) -> dict[str, object]:
        """Facts for GET /v1/models."""
        return {
            "id": self.model_id,
            "backend": self.preset.backend,
            "description": self.preset.description,
            "device": self.device,
            "dtype": self.towers["image"].dtype if "image" in self.towers else "float32",
            "runtime": {tower: report.as_dict() for tower, report in self.towers.items()},
            "embedding_dim": int(self.backend.embedding_dim),
            "logit_scale": self.logit_scale,
            "aux_encoder": self.aux_encoder_id,
            "templates": list(self.preset.templates),
            "ready": self.ready,
            "load_seconds": round(self.load_seconds, 3),
            "batching": {
                "max_batch_size": self.batcher.max_batch_size,
                "max_wait_ms": self.batcher.max_wait_s * 1000,
                "max_queue_size": self.batcher.max_queue_size,
                "queue_depth": self.batcher.queue_depth,
                "batches": self.batcher.stats.batches,
                "items": self.batcher.stats.items,
                "mean_batch_size": (
                    self.batcher.stats.items / self.batcher.stats.batches
                    if self.batcher.stats.batches
                    else 0.0
                ),
            },
            "text_cache": {
                "size": len(self.text_cache),
                "hits": self.text_cache.hits,
                "misses": self.text_cache.misses,
            },
        }
