"""The model side of ``trustserve eval``: a preset's models loaded as the server loads them, and the on-disk
cache of image encodings (one ``.npz`` per model preset + dataset + split + limit + seed + inversion,
holding the encoded indices), so a second run with other α / T_v / shots re-encodes nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from app.trust.datasets import LabelledImages
from app.trust.scores import l2_normalize
from app.vlm.aux_base import AuxImageEncoder
from app.vlm.base import VLMBackend
from app.vlm.preprocessing import AspectPolicy, apply_aspect_policy
from app.vlm.presets import ModelPreset, get_preset

SAVE_EVERY_BATCHES = 8  # the encoding cache is written after this many batches
PRIMARY_SPACE = "own"  # the preset's ``aux_encoder`` (the VLM's own features for ``kind: vlm``)


@dataclass
class LoadedModel:
    """A preset's VLM backend (+ separate image-space encoder when the preset names one)."""

    preset: ModelPreset
    backend: VLMBackend
    aux: AuxImageEncoder | None = None
    runtime: str = ""  # e.g. "image=openvino/bf16,text=onnxruntime/fp32" (part of the encodings' key)
    extra_spaces: dict[str, AuxImageEncoder] = field(default_factory=dict)  # independent image spaces
    policy: AspectPolicy = "crop"  # aspect policy applied before every encoder's transform

    @property
    def spaces(self) -> list[str]:
        """Loaded image spaces: the preset's own first, then the extra ones."""
        return [PRIMARY_SPACE, *self.extra_spaces]

    def space_name(self, space: str) -> str:
        """What an image space is (for the summary)."""
        if space in self.extra_spaces:
            return self.extra_spaces[space].name
        return self.aux.name if self.aux is not None else "the VLM's own features"

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

    def space_fingerprint(self, space: str) -> str:
        """Cache key of an extra image space's features (its spec, runtime and probe output)."""
        probe = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
        encoder = self.extra_spaces[space]
        feat = encoder.encode(encoder.preprocess(probe)[None])
        spec = self.preset.extra_image_spaces[space].model_dump_json()
        digest = hashlib.sha256((spec + self.runtime + encoder.name).encode())
        digest.update(np.round(feat, 3).tobytes())
        return digest.hexdigest()[:12]

    def encode_space(self, space: str, images: Sequence[Image.Image], batch_size: int) -> np.ndarray:
        """(N, F) raw features of an extra image space, after the aspect policy."""
        encoder = self.extra_spaces[space]
        out = []
        for start in range(0, len(images), batch_size):
            batch = [apply_aspect_policy(im, self.policy) for im in images[start : start + batch_size]]
            out.append(encoder.encode(np.stack([encoder.preprocess(im) for im in batch])))
        return np.concatenate(out)

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
        policy: AspectPolicy | None = None,
        spaces: Sequence[str] | None = None,
    ) -> LoadedModel:
        """The preset's models on the runtime layer, exactly as the server loads them, plus the preset's
        extra image spaces named in ``spaces`` (default: all; ``"own"`` is always there)."""
        from app.config import Settings
        from app.vlm.loading import load_image_space, load_models

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
        wanted = (
            list(preset.extra_image_spaces) if spaces is None else [s for s in spaces if s != PRIMARY_SPACE]
        )
        unknown = sorted(set(wanted) - set(preset.extra_image_spaces))
        if unknown:
            raise ValueError(
                f"preset {preset.name} has no image space {unknown}; it has "
                f"{[PRIMARY_SPACE, *preset.extra_image_spaces]}"
            )
        extra = {name: load_image_space(preset, name, settings) for name in wanted}
        return cls(preset, loaded.backend, loaded.aux_encoder, towers, extra, policy or preset.preprocess)

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
            batch = [
                apply_aspect_policy(images[i], self.policy)
                for i in range(start, min(start + batch_size, len(images)))
            ]
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


Encoder = Callable[[list[Image.Image]], dict[str, np.ndarray]]


class EncodingCache:
    """Named arrays (e.g. embeddings + features) of some images of one split, one ``.npz`` (no pickle)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.indices = np.zeros(0, dtype=np.int64)
        self.arrays: dict[str, np.ndarray] = {}
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as data:
                self.indices = data["indices"]
                self.arrays = {k: data[k] for k in data.files if k != "indices"}

    def lookup(
        self, encode: Encoder, data: LabelledImages, indices: np.ndarray, batch_size: int, desc: str
    ) -> dict[str, np.ndarray]:
        """Arrays of ``data`` images at ``indices``; only images not cached yet go through ``encode``."""
        indices = np.asarray(indices, dtype=np.int64)
        missing = np.setdiff1d(indices, self.indices)
        chunk = batch_size * SAVE_EVERY_BATCHES
        with tqdm(total=missing.size, desc=desc, unit="img", disable=not missing.size) as bar:
            for start in range(0, missing.size, chunk):  # save as we go: an interrupted run keeps its work
                part = missing[start : start + chunk]
                new = encode([data.images[int(i)] for i in part])
                self.indices = np.concatenate([self.indices, part])
                self.arrays = {
                    k: v if k not in self.arrays else np.concatenate([self.arrays[k], v])
                    for k, v in new.items()
                }
                self._save()
                bar.update(part.size)
        position = {int(ix): p for p, ix in enumerate(self.indices)}
        rows = np.array([position[int(i)] for i in indices], dtype=np.int64)
        return {k: v[rows] for k, v in self.arrays.items()}

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        payload: dict[str, Any] = {"indices": self.indices, **self.arrays}
        np.savez(tmp, **payload)
        tmp.replace(self.path)


def cache_path(
    cache_dir: Path | None, model: LoadedModel, data: LabelledImages, tag: str, space: str | None = None
) -> Path | None:
    """``<cache_dir>/<preset>-<fingerprint>/<dataset>-<tag>-<policy>.npz`` for the VLM (embeddings and its
    own image space), ``<cache_dir>/<preset>-<space>-<fingerprint>/…`` for an extra image space (tag:
    split, limit, seed, inversion; policy: the aspect policy, ``crop`` for a split of square images)."""
    if cache_dir is None:
        return None
    safe_dataset = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in data.name)
    unit = (
        f"{model.preset.name}-{model.fingerprint}"
        if space is None
        else f"{model.preset.name}-{space}-{model.space_fingerprint(space)}"
    )
    # letterbox pads nothing on a set of square images: the same pixels as crop, the same encodings
    policy = "crop" if data.metadata.get("all_square") else model.policy
    return cache_dir / unit / f"{safe_dataset}-{tag}-{policy}.npz"
