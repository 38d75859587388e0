"""The classification engine: owns the VLM backend, the auxiliary image encoder, the prompt-embedding
cache and the dynamic batcher; turns decoded images into embeddings and image-space features.

Pre-process / core / post-process split (as in infinity and text-embeddings-inference): preprocessing runs
in a thread pool, the model in its own single thread fed by the batcher, scoring on the caller's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeVar

import numpy as np
from PIL import Image

from app.config import Settings
from app.engine.batcher import DynamicBatcher, InferenceTimeout, QueueFullError
from app.engine.images import ImageLimits, decode_image, decoded_pixels
from app.engine.prompts import render_prompt
from app.engine.text_cache import TextEmbeddingCache
from app.errors import InvalidInput, TooLarge
from app.observability.metrics import ServiceMetrics
from app.runtime.types import TowerReport
from app.vlm.aux_base import AuxImageEncoder
from app.vlm.base import VLMBackend
from app.vlm.preprocessing import AspectPolicy, apply_aspect_policy
from app.vlm.presets import ModelPreset, get_preset

log = logging.getLogger(__name__)

_Pixels = tuple[np.ndarray, np.ndarray | None]
_Prepared = tuple[_Pixels, np.ndarray | None]  # the batcher's pixels, the independent space's pixels
_Encoded = tuple[np.ndarray, np.ndarray]
ImageSpace = Literal["own", "independent"]
OWN_SPACE: ImageSpace = "own"  # the preset's image space g (its aux encoder, or the VLM's own features)
INDEPENDENT_SPACE: ImageSpace = "independent"  # the preset's first ``extra_image_spaces`` network
T = TypeVar("T")
R = TypeVar("R")

TEXT_SLICE_S = 0.1  # aim of one text-encoding job on the model thread (image batches run in between)
MAX_TEXT_CHUNK = 256


@dataclass
class EncodedImages:
    """Joint-space embeddings (B, D), L2-normalised, and raw image-space features (B, F); seconds spent
    decoding + preprocessing and waiting for the model (for the answer's timing)."""

    embeddings: np.ndarray
    aux_features: np.ndarray
    decode_s: float = 0.0
    inference_s: float = 0.0
    space_features: dict[str, np.ndarray] = field(default_factory=dict)  # per image space asked for

    def features_in(self, space: str) -> np.ndarray:
        """Raw image-space features in ``space`` ("own" or "independent"; asked for when encoding)."""
        return self.aux_features if space == OWN_SPACE else self.space_features[space]


def lower_thread_priority(niceness: int) -> None:
    """Raise the calling thread's niceness to ``niceness`` (Linux, where niceness is per thread; a no-op
    elsewhere or when it is already higher). The pre-processing threads run this: the model's runtime
    splits each layer across every core and waits for its slowest part, so a decoding thread that takes a
    core mid-layer stalls the whole batch; niced, decoding fills the gaps between the model's sections."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)


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
            settings.preprocess_workers,
            thread_name_prefix="preprocess",
            initializer=partial(lower_thread_priority, settings.preprocess_niceness),
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
            on_rejected=self._count_overload,
        )
        self.requests_in_pipeline = 0
        self.input_side = self._model_input_side()
        self.feature_dim: int | None = None  # image-space feature width, known after start()
        self._text_turns: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._text_s_per_prompt = TEXT_SLICE_S / 16
        self.load_seconds = 0.0
        self.ready = False
        self._health_checked_at = 0.0
        self._health_ok = False
        self._independent: tuple[AuxImageEncoder, TowerReport] | None = None
        self._independent_error: str | None = None  # why loading it failed (then only "own" is offered)
        self._independent_lock = threading.Lock()

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
        """Start the batcher; warm up every batch-size bucket so first requests are not slow (and learn
        the image-space feature width, which label-set imports are checked against)."""
        self.batcher.start()
        warm = self._warm_up if self.settings.warmup else partial(self._warm_up, sizes=[1], texts=False)
        await asyncio.get_running_loop().run_in_executor(self._model_thread, warm)
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

    def _warm_up(self, sizes: list[int] | None = None, texts: bool = True) -> None:
        image = Image.new("RGB", (64, 64), (127, 127, 127))
        pixels = self._preprocess(image)
        for size in sizes or self.warmup_batch_sizes():
            outputs = self._encode_batch([pixels] * size)
        self.feature_dim = int(outputs[0][1].shape[0])
        if texts:
            self._encode_texts(["a photo of a warm-up."])

    def _model_input_side(self) -> int:
        """The longest side of the model's input tensor(s) (decoding needs no more than twice that)."""
        pixels = self._preprocess(Image.new("RGB", (64, 48), (127, 127, 127)))
        return max(int(max(p.shape[-2:])) for p in pixels if p is not None)

    # the independent image space ---------------------------------------------------------------
    @property
    def independent_space_name(self) -> str | None:
        """The preset's extra image space label sets may choose as "independent" (its first
        ``extra_image_spaces`` entry; e.g. EfficientNet-Lite0 beside the offline Lite2), or None."""
        return next(iter(self.preset.extra_image_spaces), None)

    def image_spaces(self) -> list[ImageSpace]:
        """The image spaces label sets can use on this model: "own", and "independent" when the preset
        declares an extra one (and loading it has not failed)."""
        usable = self.independent_space_name and self._independent_error is None
        return [OWN_SPACE, INDEPENDENT_SPACE] if usable else [OWN_SPACE]

    def independent_loadable(self) -> bool:
        """Load the independent space now if needed (blocking); False when it cannot be (logged once;
        e.g. a torch-free install without its export), and from then on only "own" is offered."""
        if INDEPENDENT_SPACE not in self.image_spaces():
            return False
        try:
            self.independent_encoder()
        except InvalidInput:
            return False
        return True

    def independent_encoder(self) -> tuple[AuxImageEncoder, TowerReport]:
        """The independent space's encoder on the runtime layer, loaded on first use (blocking: call from
        a thread; a label set that never uses it costs nothing). A failed load is remembered: it is
        logged once and every later call answers ``InvalidInput`` at once instead of retrying the load
        (an export, under ``runtime=auto``) on each request."""
        name = self.independent_space_name
        with self._independent_lock:
            if name is None or self._independent_error is not None:
                raise self._no_independent_space()
            if self._independent is None:
                from app.vlm.loading import load_image_space_tower

                started = time.perf_counter()
                try:
                    self._independent = load_image_space_tower(self.preset, name, self.settings)
                except Exception as exc:  # a missing package or export: label sets use the own space
                    self._independent_error = f"{type(exc).__name__}: {exc}"
                    log.warning("independent image space unavailable, label sets use the own space: %s", exc)
                    raise self._no_independent_space() from None
                log.info(
                    "independent image space %s (%s) loaded in %.2f s on %s/%s",
                    name,
                    self._independent[0].name,
                    time.perf_counter() - started,
                    self._independent[1].runtime,
                    self._independent[1].precision,
                )
            return self._independent

    def _no_independent_space(self) -> InvalidInput:
        why = (
            f" (loading it failed: {self._independent_error})"
            if self._independent_error
            else " (its preset declares no extra_image_spaces)"
        )
        return InvalidInput(
            f"model {self.model_id} has no independent image space{why}", code="no_independent_image_space"
        )

    def space_encoder_id(self, space: str) -> str:
        """What an image space is (the answer's ``trust.image_space``)."""
        if space == OWN_SPACE:
            return self.aux_encoder_id
        return f"{self.independent_space_name}:{self.independent_encoder()[0].name}"

    def space_towers(self, space: str) -> dict[str, TowerReport]:
        """The image-path towers that run per request for a label set in ``space`` (its calibration
        basis): the model's, plus the independent encoder's when that space is used."""
        if space == OWN_SPACE:
            return dict(self.towers)
        return {**self.towers, f"image-space:{self.independent_space_name}": self.independent_encoder()[1]}

    # admission ---------------------------------------------------------------------------------
    def check_capacity(self) -> None:
        """``QueueFullError`` when the pipeline is already full: checked before a body is read, so an
        overloaded server answers 429 at once (without holding a slot while the body arrives)."""
        if self.requests_in_pipeline >= self.settings.max_queue_size:
            self._count_overload()
            raise QueueFullError(
                f"{self.model_id} pipeline", self.settings.max_queue_size, self.batcher.retry_after_s()
            )

    def _count_overload(self) -> None:
        self.metrics.overload_rejections.labels(self.model_id).inc()

    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """Bound the requests between a complete body and the answer (decode + queue + model) to
        max_queue_size. Entered once the body is in: a slow upload holds no slot."""
        self.check_capacity()
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
    def _preprocess(self, image: Image.Image, policy: AspectPolicy | None = None) -> _Pixels:
        """The aspect policy (default: the preset's), then each encoder's own transform (one image for
        both). Whoever builds prototypes and whoever queries them must pass the same policy."""
        return self._prepare(image, policy, independent=False)[0]

    def _prepare(self, image: Image.Image, policy: AspectPolicy | None, *, independent: bool) -> _Prepared:
        """``_preprocess``, plus the independent space's transform of the same policy-applied image."""
        image = apply_aspect_policy(image, policy or self.preset.preprocess)
        vlm_pixels = self.backend.preprocess(image)
        aux_pixels = self.aux_encoder.preprocess(image) if self.aux_encoder is not None else None
        extra = self.independent_encoder()[0].preprocess(image) if independent else None
        return (vlm_pixels, aux_pixels), extra

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

    @property
    def image_limits(self) -> ImageLimits:
        s = self.settings
        return ImageLimits(s.max_image_pixels, s.max_image_side, s.min_image_side, self.input_side)

    def _decode_and_preprocess(
        self,
        upload: tuple[bytes, str],
        policy: AspectPolicy | None = None,
        independent: bool = False,
        check_pixels: Callable[[int], None] | None = None,
    ) -> _Prepared:
        """One upload -> model input tensors, in a pre-processing thread; the decoded image (at most
        2× the model's input side, see ``app.engine.images``) does not outlive this call.
        ``check_pixels``: a one-image request's pixel budget, checked from the header before decoding."""
        data, name = upload
        started = time.perf_counter()
        image = decode_image(data, self.image_limits, name=name, check_pixels=check_pixels)
        decoded = time.perf_counter()
        pixels = self._prepare(image, policy, independent=independent)
        self.metrics.stage_duration.labels("decode", self.model_id).observe(decoded - started)
        self.metrics.stage_duration.labels("preprocess", self.model_id).observe(time.perf_counter() - decoded)
        return pixels

    async def _in_pool(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """``fn`` over ``items`` in the pre-processing pool, at most ``preprocess_workers`` of this call's
        items at a time (so other requests' images interleave); the rest is cancelled on the first error."""
        loop = asyncio.get_running_loop()
        window = asyncio.Semaphore(self.settings.preprocess_workers)

        async def one(item: T) -> R:
            async with window:
                return await loop.run_in_executor(self._preprocess_pool, fn, item)

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _check_pixel_total(self, total: int, images: int) -> None:
        """``TooLarge`` when a request's images decode to more than ``max_request_pixels``."""
        budget = self.settings.max_request_pixels
        if total > budget:
            raise TooLarge(
                f"the {images} images decode to {total} pixels; the limit is {budget} per request "
                "(send fewer or smaller images)",
                code="too_many_pixels",
            )

    def _request_pixels(self, uploads: list[tuple[bytes, str]]) -> int:
        limits = self.image_limits
        return sum(decoded_pixels(data, limits, name=name) for data, name in uploads)

    async def check_request_pixels(self, files: list[bytes], *, field: str = "image") -> None:
        """``TooLarge`` before any decoding when the uploads would decode to more than ``max_request_pixels``
        (summed over the request, JPEGs at their draft size; read from the headers, all of them in one
        pre-processing job: a header costs tens of microseconds)."""
        uploads = [(data, f"{field}[{i}]") for i, data in enumerate(files)]
        [total] = await self._in_pool(self._request_pixels, [uploads])
        self._check_pixel_total(total, len(files))

    async def encode_uploads(
        self,
        files: list[bytes],
        *,
        field: str = "image",
        policy: AspectPolicy | None = None,
        spaces: Sequence[str] = (OWN_SPACE,),
    ) -> EncodedImages:
        """Uploaded image files -> embeddings: the request's pixel budget is checked from the headers,
        then the images are decoded, preprocessed and embedded one batch at a time (never all decoded at
        once; each batch goes through the batcher after the previous one, so other requests interleave).
        ``spaces``: the image spaces whose features are wanted ("independent" adds one forward of its
        encoder per batch; ``features_in``)."""
        if not files:
            raise ValueError("encode_uploads needs at least one file")
        independent = await self._wants_independent(spaces)
        uploads = [(data, f"{field}[{i}]") for i, data in enumerate(files)]
        prepare = partial(self._decode_and_preprocess, policy=policy, independent=independent)
        if len(files) == 1:  # the budget is checked from the header the decoder reads: one pool job
            check = partial(self._check_pixel_total, images=1)
            return await self._encode_chunks(uploads, partial(prepare, check_pixels=check))
        await self.check_request_pixels(files, field=field)
        return await self._encode_chunks(uploads, prepare)

    async def encode_images(
        self,
        images: list[Image.Image],
        *,
        policy: AspectPolicy | None = None,
        spaces: Sequence[str] = (OWN_SPACE,),
    ) -> EncodedImages:
        """Preprocess decoded images in the pool (aspect ``policy``, default the preset's), then embed them
        through the dynamic batcher (a batch at a time); ``spaces`` as for ``encode_uploads``."""
        if not images:
            raise ValueError("encode_images needs at least one image")
        independent = await self._wants_independent(spaces)
        prepare = partial(self._prepare, policy=policy, independent=independent)
        return await self._encode_chunks(list(images), prepare)

    async def _wants_independent(self, spaces: Sequence[str]) -> bool:
        unknown = set(spaces) - {OWN_SPACE, INDEPENDENT_SPACE}
        if unknown:
            raise ValueError(f"unknown image spaces {sorted(unknown)}")
        if INDEPENDENT_SPACE not in spaces:
            return False
        await asyncio.to_thread(self.independent_encoder)  # loaded once, off the event loop
        return True

    async def _encode_chunks(self, items: list[T], prepare: Callable[[T], _Prepared]) -> EncodedImages:
        chunk = self.settings.max_batch_size
        embeddings: list[np.ndarray] = []
        features: list[np.ndarray] = []
        independent: list[np.ndarray] = []
        decode_s = inference_s = 0.0
        loop = asyncio.get_running_loop()
        for start in range(0, len(items), chunk):
            t0 = time.perf_counter()
            prepared = await self._in_pool(prepare, items[start : start + chunk])
            pixels = [p for p, _ in prepared]
            t1 = time.perf_counter()
            self.metrics.queue_depth.labels(self.model_id).set(self.batcher.queue_depth + len(pixels))
            outputs = await self.batcher.submit_many(pixels, timeout_s=self.settings.request_timeout_s)
            extra = [e for _, e in prepared if e is not None]
            if extra:  # one forward of the independent encoder for the chunk, on the model thread
                encoder = self.independent_encoder()[0]
                batch = np.stack(extra)
                independent.append(await loop.run_in_executor(self._model_thread, encoder.encode, batch))
            decode_s, inference_s = decode_s + t1 - t0, inference_s + time.perf_counter() - t1
            embeddings += [e for e, _ in outputs]
            features += [f for _, f in outputs]
        spaces: dict[str, np.ndarray] = {}
        if independent:
            spaces[INDEPENDENT_SPACE] = np.concatenate(independent).astype(np.float32)
        return EncodedImages(np.stack(embeddings), np.stack(features), decode_s, inference_s, spaces)

    # texts ---------------------------------------------------------------------------------------
    async def text_embeddings(
        self,
        labels: list[str],
        templates: list[str],
        *,
        max_new_prompts: int | None = None,
        timeout_s: float | None = None,
    ) -> np.ndarray:
        """(C, D) class embeddings: mean over templates of normalised prompt embeddings, renormalised
        (the prompt-ensembling recipe of Radford et al., 2021). Templates must pass
        ``app.engine.prompts.split_template``.

        Prompts missing from the cache are bounded (``max_new_prompts``, default the per-request setting;
        ``InvalidInput`` before any is encoded) and encoded in chunks of about ``TEXT_SLICE_S`` on the model
        thread, one chunk at a time across all requests, so image batches (and /readyz) run in between."""
        limit = self.settings.max_new_prompts_per_request if max_new_prompts is None else max_new_prompts
        prompts = [render_prompt(t, label) for label in labels for t in templates]
        found, missing = self.text_cache.get_many(self.model_id, prompts)
        if len(missing) > limit:
            raise InvalidInput(
                f"{len(labels)} labels × {len(templates)} templates need {len(missing)} new prompt "
                f"embeddings; the limit is {limit} per request (send fewer labels or templates, or use a "
                "label set)",
                code="too_many_prompts",
            )
        if missing:
            missing.sort(key=len)  # chunks of similar length: little padding in each model call
            work = self._encode_missing(missing, found)
            try:
                await (asyncio.wait_for(work, timeout_s) if timeout_s is not None else work)
            except TimeoutError:
                raise InferenceTimeout(
                    f"text encoding did not finish within {timeout_s:g} s (server busy); retry later"
                ) from None
        per_prompt = np.stack([found[p] for p in prompts]).reshape(len(labels), len(templates), -1)
        mean = per_prompt.mean(axis=1)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)

    def _text_turn(self) -> asyncio.Lock:
        """One text chunk at a time on the model thread (per event loop; FIFO among requests)."""
        loop = asyncio.get_running_loop()
        if loop not in self._text_turns:
            self._text_turns = {loop: asyncio.Lock()}
        return self._text_turns[loop]

    async def _encode_missing(self, missing: list[str], found: dict[str, np.ndarray]) -> None:
        loop = asyncio.get_running_loop()
        done = 0
        while done < len(missing):
            size = int(min(MAX_TEXT_CHUNK, max(1, TEXT_SLICE_S / self._text_s_per_prompt)))
            chunk = missing[done : done + size]
            async with self._text_turn():
                started = time.perf_counter()
                vectors = await loop.run_in_executor(self._model_thread, self._encode_texts, chunk)
                seconds = time.perf_counter() - started
            self.metrics.stage_duration.labels("text_inference", self.model_id).observe(seconds)
            self._text_s_per_prompt = 0.5 * self._text_s_per_prompt + 0.5 * seconds / len(chunk)
            self.text_cache.put_many(self.model_id, chunk, vectors)
            found.update(zip(chunk, vectors, strict=True))
            done += len(chunk)

    def _encode_texts(self, prompts: list[str]) -> np.ndarray:
        return np.asarray(self.backend.encode_texts(prompts), dtype=np.float32)

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
            "preprocess": self.preset.preprocess,
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
