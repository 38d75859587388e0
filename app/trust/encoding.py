"""The model side of ``trustserve eval``: a preset's models loaded as the server loads them, and the on-disk
cache of image encodings (one ``.npz`` per model preset + dataset + split + limit + seed + inversion,
holding the encoded indices), so a second run with other α / T_v / shots re-encodes nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from app.trust.datasets import LabelledImages
from app.trust.scores import l2_normalize
from app.vlm.aux_base import AuxImageEncoder
from app.vlm.base import VLMBackend
from app.vlm.presets import ModelPreset, get_preset

SAVE_EVERY_BATCHES = 8  # the encoding cache is written after this many batches


@dataclass
class LoadedModel:
    """A preset's VLM backend (+ separate image-space encoder when the preset names one)."""

    preset: ModelPreset
    backend: VLMBackend
    aux: AuxImageEncoder | None = None
    runtime: str = ""  # e.g. "image=openvino/bf16,text=onnxruntime/fp32" (part of the encodings' key)

    @property
    def logit_scale(self) -> float:
        return float(
            self.preset.logit_scale if self.preset.logit_scale is not None else self.backend.logit_scale
        )

    @property
    def logit_bias(self) -> float:
        return float(self.backend.logit_bias)

    @cached_property
    def fingerprint(self) -> str:
        """Cache key of the image encodings: the preset fields that shape them (backend, args, image space)
        plus the rounded outputs on a fixed probe image, so changed weights (or a random-weight model
        re-initialised at each load) never reuse stale encodings. Logit scale, prompts and TrustVLM
        defaults are not part of it: changing them re-encodes nothing."""
        probe = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
        emb, feat = self.encode_images([probe], batch_size=1, desc="", progress=False)
        encoder_fields = self.preset.model_dump_json(include={"backend", "args", "aux_encoder"})
        digest = hashlib.sha256((encoder_fields + self.runtime).encode())
        digest.update(np.round(emb, 3).tobytes())
        digest.update(np.round(feat, 3).tobytes())
        return digest.hexdigest()[:12]

    @classmethod
    def load(
        cls,
        name: str,
        *,
        models_dir: Path,
        device: str,
        dtype: str,
        runtime: str = "auto",
        precision: str = "fp32",
        calibration_dir: Path | None = None,
    ) -> LoadedModel:
        """The preset's models on the runtime layer, exactly as the server loads them."""
        from app.config import Settings
        from app.vlm.loading import load_models

        preset = get_preset(name, models_dir)
        settings = Settings(
            model=name,
            models_dir=models_dir,
            device=device,
            dtype=dtype,
            runtime=runtime,
            precision=precision,
            int8_calibration_dir=calibration_dir,
        )
        loaded = load_models(preset, settings)
        towers = ",".join(
            f"{t}={r.runtime}/{r.precision}/{r.dtype}" for t, r in sorted(loaded.towers.items())
        )
        return cls(preset, loaded.backend, loaded.aux_encoder, towers)

    def class_embeddings(self, class_names: Sequence[str]) -> np.ndarray:
        """(C, D): normalised mean over the preset's templates of normalised prompt embeddings (Radford
        et al., 2021 prompt ensembling; one template = the plain prompt embedding)."""
        templates = self.preset.templates
        prompts = [t.format(name) for name in class_names for t in templates]
        emb = self.backend.encode_texts(prompts)
        return l2_normalize(emb.reshape(len(class_names), len(templates), -1).mean(axis=1)).astype(np.float32)

    def encode_images(
        self, images: Sequence[Image.Image], batch_size: int, desc: str, *, progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) joint-space embeddings and (N, F) raw image-space features, ``batch_size`` at a time."""
        embeddings: list[np.ndarray] = []
        features: list[np.ndarray] = []
        batches = range(0, len(images), batch_size)
        for start in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            batch = [images[i] for i in range(start, min(start + batch_size, len(images)))]
            pixels = np.stack([self.backend.preprocess(im) for im in batch])
            encoding = self.backend.encode_images(pixels)
            embeddings.append(encoding.embeddings)
            if self.aux is not None:
                aux_pixels = np.stack([self.aux.preprocess(im) for im in batch])
                features.append(self.aux.encode(aux_pixels))
            else:
                own = encoding.features if encoding.features is not None else encoding.embeddings
                features.append(own)
        return np.concatenate(embeddings), np.concatenate(features)


class EncodingCache:
    """Embeddings + features of some images of one split, stored as one ``.npz`` (no pickle)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.indices = np.zeros(0, dtype=np.int64)
        self.embeddings: np.ndarray | None = None
        self.features: np.ndarray | None = None
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as data:
                self.indices, self.embeddings, self.features = (
                    data["indices"],
                    data["embeddings"],
                    data["features"],
                )

    def lookup(
        self, model: LoadedModel, data: LabelledImages, indices: np.ndarray, batch_size: int, desc: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodings of ``data`` images at ``indices``; only images not cached yet go through the model."""
        indices = np.asarray(indices, dtype=np.int64)
        missing = np.setdiff1d(indices, self.indices)
        chunk = batch_size * SAVE_EVERY_BATCHES
        with tqdm(total=missing.size, desc=desc, unit="img", disable=not missing.size) as bar:
            for start in range(0, missing.size, chunk):  # save as we go: an interrupted run keeps its work
                part = missing[start : start + chunk]
                emb, feat = model.encode_images(
                    [data.images[int(i)] for i in part], batch_size, desc, progress=False
                )
                self.indices = np.concatenate([self.indices, part])
                self.embeddings = emb if self.embeddings is None else np.concatenate([self.embeddings, emb])
                self.features = feat if self.features is None else np.concatenate([self.features, feat])
                self._save()
                bar.update(part.size)
        assert self.embeddings is not None and self.features is not None
        position = {int(ix): p for p, ix in enumerate(self.indices)}
        rows = np.array([position[int(i)] for i in indices], dtype=np.int64)
        return self.embeddings[rows], self.features[rows]

    def _save(self) -> None:
        if self.path is None or self.embeddings is None or self.features is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, indices=self.indices, embeddings=self.embeddings, features=self.features)
        tmp.replace(self.path)


def cache_path(cache_dir: Path | None, model: LoadedModel, data: LabelledImages, tag: str) -> Path | None:
    """``<cache_dir>/<preset>-<fingerprint>/<dataset>-<tag>.npz`` (tag: split, limit, seed, inversion)."""
    if cache_dir is None:
        return None
    safe_dataset = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in data.name)
    return cache_dir / f"{model.preset.name}-{model.fingerprint}" / f"{safe_dataset}-{tag}.npz"
