"""Serving multimodal checkpoints: load every checkpoint folder found, validate and preprocess request
inputs per the checkpoint's modality specs, predict, score and decide with the calibrated threshold.

Request-path problems raise domain errors (``app.errors``: ``NotFound`` for an unknown model,
``InvalidInput`` for a bad modality payload); the API maps them to HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import softmax

from app.engine.batcher import DynamicBatcher
from app.errors import InvalidInput, NotFound
from app.multimodal.checkpoint import CheckpointConfig, CheckpointError, is_checkpoint_dir
from app.multimodal.limits import InputLimits
from app.multimodal.runtime import ServedCheckpoint, load_served_checkpoint
from app.multimodal.specs import (
    EXTRACTED_KINDS,
    ImagePreprocessing,
    LogMelPreprocessing,
    ModalitySpec,
    PretrainedImagePreprocessing,
    RawInput,
    SpeechEmbeddingPreprocessing,
)
from app.runtime.cache import ExportCache

if TYPE_CHECKING:
    from app.multimodal.pretrained import FeatureExtractor
from app.runtime.towers import RuntimeContext
from app.runtime.types import RuntimeRequest, UnsupportedSettingError
from app.trust.calibration import Decision
from app.trust.scores import baseline_scores

log = logging.getLogger(__name__)

ModalityPayload = Sequence[float] | bytes
PreparedSample = dict[str, np.ndarray | RawInput]
MAX_SEARCH_DEPTH = 3
TRAINING_SUMMARY = ("loss", "best_epoch", "dataset")


def find_checkpoint_dirs(root: Path, max_depth: int = MAX_SEARCH_DEPTH) -> list[Path]:
    """``root`` itself if it is a checkpoint, else checkpoint folders below it (sorted, ≤ max_depth deep)."""
    root = Path(root)
    if is_checkpoint_dir(root):
        return [root]
    found: list[Path] = []
    if max_depth > 0 and root.is_dir():
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += find_checkpoint_dirs(child, max_depth - 1)
    return found


def _accepted_forms(spec: ModalitySpec) -> list[str]:
    if isinstance(spec.preprocessing, ImagePreprocessing):
        return ["image file (PNG, JPEG, ...)", "json vector"]
    if isinstance(spec.preprocessing, LogMelPreprocessing):
        return ["audio file (WAV, FLAC, OGG)", "json vector"]
    if isinstance(spec.preprocessing, PretrainedImagePreprocessing):
        return ["image file (PNG, JPEG, ...) → pretrained features", "json feature vector"]
    if isinstance(spec.preprocessing, SpeechEmbeddingPreprocessing):
        return ["audio file (WAV, FLAC, OGG) → pretrained features", "json feature vector"]
    return ["json vector"]


def load_extractors(
    config: CheckpointConfig, runtime: RuntimeRequest | None = None, cache: ExportCache | None = None
) -> dict[str, FeatureExtractor]:
    """Build (once per process) the pretrained extractors a checkpoint's modalities use, on ``runtime``
    (the image extractor; default the torch reference), and check that each produces the feature length
    the model expects; raises ``CheckpointError`` otherwise. Returns them by modality name."""
    extractors: dict[str, FeatureExtractor] = {}
    for spec in config.fusion.modalities:
        if spec.preprocessing.kind not in EXTRACTED_KINDS:
            continue
        try:  # a missing package (torch in the slim image) skips this checkpoint, not the server
            from app.multimodal.pretrained import extractor_for  # onnxruntime / openvino / torch: when needed

            extractor = extractor_for(spec.preprocessing, runtime, cache)  # type: ignore[arg-type]
        except (ImportError, OSError, RuntimeError, ValueError, UnsupportedSettingError) as exc:
            raise CheckpointError(
                f"modality {spec.name!r}: cannot load its pretrained extractor: {exc}"
            ) from exc
        if [extractor.dim] != spec.input_shape:
            raise CheckpointError(
                f"modality {spec.name!r}: the extractor gives {extractor.dim} features, "
                f"the model expects {spec.input_shape}"
            )
        extractors[spec.name] = extractor
    return extractors


@dataclass
class _Model:
    checkpoint: ServedCheckpoint
    extractors: dict[str, FeatureExtractor] = field(default_factory=dict)

    @property
    def config(self) -> CheckpointConfig:
        return self.checkpoint.config

    def modality(self, name: str) -> ModalitySpec:
        return next(m for m in self.config.fusion.modalities if m.name == name)


class MultimodalService:
    """The loaded multimodal models, keyed by checkpoint name."""

    def __init__(
        self,
        checkpoints: Iterable[ServedCheckpoint] = (),
        extractors: Mapping[str, dict[str, FeatureExtractor]] | None = None,
    ) -> None:
        """``extractors``: per checkpoint name, the pretrained extractors loaded for it (modalities without
        one get the torch reference when a file arrives)."""
        self._models: dict[str, _Model] = {}
        self._batchers: dict[str, DynamicBatcher[PreparedSample, np.ndarray]] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="multimodal")
        # decoding uploads (images up to the pixel limit, audio): a small pool, so concurrent requests
        # cannot decode more than two files at once
        self._preprocess_pool = ThreadPoolExecutor(2, thread_name_prefix="multimodal-preprocess")
        self._batching: dict[str, Any] = {"max_batch_size": 32, "max_wait_ms": 5.0, "max_queue_size": 256}
        self._request_timeout_s = 30.0
        self._on_batch: Callable[[str, int, float], None] | None = None
        self._on_rejected: Callable[[str], None] | None = None
        self.input_limits: InputLimits | None = None  # the server sets its own (Settings) at start-up
        for ckpt in checkpoints:
            name = ckpt.config.name
            if name in self._models:
                log.warning("skipping %s: a multimodal model named %r is already loaded", ckpt.path, name)
                continue
            self._models[name] = _Model(ckpt, dict((extractors or {}).get(name, {})))

    @classmethod
    def from_dirs(
        cls,
        dirs: Iterable[Path | None],
        runtime: RuntimeRequest | None = None,
        cache: ExportCache | None = None,
    ) -> MultimodalService:
        """Load every checkpoint folder under ``dirs`` (missing dirs ignored) on ``runtime`` (default: the
        torch reference); broken ones are logged and skipped so one bad folder never keeps the server
        from starting."""
        request = runtime or RuntimeRequest(runtime="torch", device="cpu")
        cache = cache or ExportCache()
        loaded = []
        extractors: dict[str, dict[str, FeatureExtractor]] = {}
        for root in dirs:
            if root is None or not Path(root).exists():
                continue
            for folder in find_checkpoint_dirs(Path(root)):
                context = RuntimeContext(request, cache, f"multimodal-{folder.name}")
                try:
                    served = load_served_checkpoint(folder, context)
                    extractors[served.config.name] = load_extractors(served.config, request, cache)
                    loaded.append(served)
                    log.info(
                        "loaded multimodal checkpoint %s on %s %s (extractors: %s)",
                        folder,
                        served.report.runtime,
                        served.report.precision,
                        {
                            name: f"{r.runtime} {r.precision}"
                            if (r := getattr(e, "report", None))
                            else "onnxruntime"
                            for name, e in extractors[served.config.name].items()
                        },
                    )
                except (CheckpointError, UnsupportedSettingError) as exc:
                    log.error("skipping broken multimodal checkpoint %s: %s", folder, exc)
                finally:
                    context.close()
        return cls(loaded, extractors)

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def list_models(self) -> list[dict[str, Any]]:
        """Public description of every model (shape of ``MultimodalModelInfo``)."""
        out = []
        for name in self.names:
            config = self._models[name].config
            calibration = config.calibration.model_dump()
            calibration["calibrated"] = config.calibration.calibrated
            score_metrics = config.validation_metrics.get("scores", {}).get(config.calibration.score, {})
            out.append(
                {
                    "name": name,
                    "description": config.description,
                    "class_names": config.class_names,
                    "modalities": [
                        {
                            "name": m.name,
                            "input": m.preprocessing.kind,
                            "input_shape": m.input_shape,
                            "accepts": _accepted_forms(m),
                            "preprocessing": m.preprocessing.model_dump(),
                        }
                        for m in config.fusion.modalities
                    ],
                    "outlier_class": config.fusion.outlier_class,
                    "calibration": calibration,
                    "validation": {"score": config.calibration.score, **score_metrics},
                    "training": {k: config.training[k] for k in TRAINING_SUMMARY if k in config.training},
                }
            )
        return out

    def _model(self, name: str) -> _Model:
        if name not in self._models:
            raise NotFound(
                f"unknown multimodal model {name[:64]!r}; loaded: {self.names}", code="model_not_found"
            )
        return self._models[name]

    def prepare_inputs(self, model: str, inputs: Mapping[str, ModalityPayload]) -> PreparedSample:
        """Check the modality names and turn each payload into its model input array (422 on bad input);
        files of a pretrained-feature modality stay ``RawInput`` until the batched forward."""
        entry = self._model(model)
        expected = entry.config.fusion.modality_names
        unknown = sorted(set(inputs) - set(expected))
        missing = [m for m in expected if m not in inputs]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown modalities {unknown}")
            if missing:
                parts.append(f"missing modalities {missing}")
            raise InvalidInput(
                f"{'; '.join(parts)}: model {model!r} expects exactly {expected}",
                code="invalid_modalities",
                details={"expected": expected, "unknown": unknown, "missing": missing},
            )
        # imported here: decoding needs libsndfile and the extractors' helpers, a vector-only server neither
        from app.multimodal.preprocessing import InputError, file_input, vector_input

        arrays: PreparedSample = {}
        for name in expected:
            spec, payload = entry.modality(name), inputs[name]
            try:
                if isinstance(payload, bytes | bytearray):
                    arrays[name] = file_input(bytes(payload), spec, self.input_limits)
                else:
                    arrays[name] = vector_input(payload, spec)
            except InputError as exc:
                raise InvalidInput(
                    str(exc), code="invalid_modality_input", details={"modality": name}
                ) from exc
        return arrays

    def _extract(self, entry: _Model, samples: list[PreparedSample]) -> dict[str, np.ndarray]:
        """Stack each modality over the batch; ``RawInput`` files go through the modality's pretrained
        extractor, all of the batch's files in one call."""
        stacked = {}
        for name in entry.config.fusion.modality_names:
            values = [sample[name] for sample in samples]
            raw = [i for i, value in enumerate(values) if isinstance(value, RawInput)]
            if raw:
                extractor = entry.extractors.get(name)
                if extractor is None:
                    from app.multimodal.pretrained import extractor_for

                    extractor = extractor_for(entry.modality(name).preprocessing)  # type: ignore[arg-type]
                features = extractor(np.stack([values[i].array for i in raw]))  # type: ignore[union-attr]
                for row, i in enumerate(raw):
                    values[i] = features[row]
            stacked[name] = np.stack(values).astype(np.float32, copy=False)  # type: ignore[arg-type]
        return stacked

    def _forward(self, entry: _Model, samples: list[PreparedSample]) -> list[np.ndarray]:
        """ONE forward pass for a batch of prepared samples -> fused class logits per sample."""
        batch = self._extract(entry, samples)
        return list(entry.checkpoint.class_logits(batch).astype(np.float64))

    def _answer(
        self, model: str, logits: np.ndarray, top_k: int, timing_ms: dict[str, float]
    ) -> dict[str, Any]:
        """Top-k, every score, the confidence and the calibrated decision from one sample's logits."""
        if not np.isfinite(logits).all():
            raise InvalidInput(
                "the model produced non-finite logits for this input", code="non_finite_output"
            )
        config = self._model(model).config
        probs = softmax(logits)
        order = np.argsort(-probs, kind="stable")[: min(top_k, len(probs))]
        ranked = [
            {"label": config.class_names[i], "index": int(i), "probability": float(probs[i])} for i in order
        ]
        scores = {name: float(values[0]) for name, values in baseline_scores(logits[None]).items()}
        calibration = config.calibration
        confidence = scores[calibration.score]
        accept = None if calibration.threshold is None else bool(confidence >= calibration.threshold)
        return {
            "model": model,
            "prediction": ranked[0],
            "top_k": ranked,
            "scores": scores,
            "confidence": confidence,
            "decision": Decision(
                accept=accept,
                threshold=calibration.threshold,
                score=calibration.score,
                rule=calibration.rule,
                guarantee=calibration.guarantee,
                calibrated=calibration.calibrated,
                note=None
                if calibration.calibrated
                else "checkpoint has no calibrated threshold: no decision",
            ).model_dump(),
            "timing_ms": timing_ms,
        }

    def predict(self, model: str, inputs: Mapping[str, ModalityPayload], top_k: int = 5) -> dict[str, Any]:
        """Prediction, top-k, every score, the confidence and the calibrated decision for one sample
        (unbatched; the server uses ``predict_batched``)."""
        _check_top_k(top_k)
        t0 = time.perf_counter()
        entry = self._model(model)
        arrays = self.prepare_inputs(model, inputs)
        t1 = time.perf_counter()
        [logits] = self._forward(entry, [arrays])
        t2 = time.perf_counter()
        timing = {"preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}
        timing["total"] = (time.perf_counter() - t0) * 1000
        return self._answer(model, logits, top_k, timing)

    def configure_batching(
        self,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        request_timeout_s: float,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        """Serve predictions through one dynamic batcher per model (server settings); ``on_batch`` and
        ``on_rejected`` (a full queue: 429) observe each model's batches for the metrics."""
        self._batching = {
            "max_batch_size": max_batch_size,
            "max_wait_ms": max_wait_ms,
            "max_queue_size": max_queue_size,
        }
        self._request_timeout_s = request_timeout_s
        self._on_batch = on_batch
        self._on_rejected = on_rejected

    def _batcher(self, model: str) -> DynamicBatcher[PreparedSample, np.ndarray]:
        entry = self._model(model)
        batcher = self._batchers.get(model)
        if batcher is None:
            on_batch, on_rejected = self._on_batch, self._on_rejected
            batcher = DynamicBatcher(
                f"multimodal-{model}",
                partial(self._forward, entry),
                executor=self._executor,
                on_batch=(lambda n, s: on_batch(model, n, s)) if on_batch is not None else None,
                on_rejected=(lambda: on_rejected(model)) if on_rejected is not None else None,
                **self._batching,
            )
            self._batchers[model] = batcher
        return batcher

    async def predict_batched(
        self, model: str, inputs: Mapping[str, ModalityPayload], top_k: int = 5
    ) -> dict[str, Any]:
        """Pre-process in a worker thread, run the forward pass batched with other requests, post-process.
        Raises ``QueueFullError`` when the model's queue is full (the route answers 429)."""
        _check_top_k(top_k)
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        arrays = await loop.run_in_executor(self._preprocess_pool, self.prepare_inputs, model, inputs)
        t1 = time.perf_counter()
        [logits] = await self._batcher(model).submit_many([arrays], timeout_s=self._request_timeout_s)
        t2 = time.perf_counter()
        timing = {"preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}
        timing["total"] = (time.perf_counter() - t0) * 1000
        return self._answer(model, logits, top_k, timing)

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise InvalidInput("top_k must be >= 1", code="invalid_top_k")
