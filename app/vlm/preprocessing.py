"""Image preprocessing in PIL + numpy, shared by every runtime (torch included), so that a tower's inputs
never depend on the executor and the serving path needs no torchvision.

One :class:`ImagePreprocessor` covers the eval transforms of the served models: CLIP / open_clip (resize
the shorter side, centre crop), SigLIP (squash to a square), timm and DINOv2 (resize to ``crop / crop_pct``,
centre crop), EfficientNet-Lite. Resizing is PIL's (what torchvision's ``Resize`` does on PIL images, and
what the transformers "slow" image processors do); the size arithmetic follows torchvision's.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

Interpolation = Literal["bicubic", "bilinear", "nearest", "lanczos"]
_PIL_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImagePreprocessor(BaseModel):
    """RGB PIL image -> (3, H, W) float32: resize, optional centre crop, scale to [0, 1], normalise.

    ``resize_mode``: ``shortest`` scales the shorter side to ``resize`` (aspect kept, torchvision's
    ``Resize(int)``); ``squash`` resizes to ``resize`` x ``resize`` (aspect lost, SigLIP's processor).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    resize: int = Field(gt=0)
    resize_mode: Literal["shortest", "squash"] = "shortest"
    crop: int | None = Field(None, gt=0)
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def output_size(self) -> int:
        return self.crop or self.resize

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":  # (convert would copy an RGB image too)
            image = image.convert("RGB")
        image = self._resize(image)
        if self.crop is not None:
            image = _center_crop(image, self.crop)
        return _normalise(np.asarray(image), self.mean, self.std)

    def _resize(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if self.resize_mode == "squash":
            size = (self.resize, self.resize)
        else:  # torchvision: the short side becomes ``resize``, the long side int(resize * long / short)
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.resize * long / short)
            size = (self.resize, new_long) if w <= h else (new_long, self.resize)
        if size == (w, h):
            return image
        return image.resize(size, _PIL_RESAMPLE[self.interpolation])

    def describe(self) -> dict[str, Any]:
        return self.model_dump()


@functools.lru_cache(maxsize=64)
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ((v / 255) − mean_c) / std_c for every 8-bit value v, computed with the same
    float32 operations as the arithmetic it replaces (so the lookup is bit-identical to it)."""
    values = np.arange(256, dtype=np.float32) / np.float32(255.0)
    table = (values[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    table.setflags(write=False)
    return table


def _normalise(rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised: one table lookup per channel plane, written
    straight into the output (no float temporaries of the whole image)."""
    table = _normalisation_table(mean, std)
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # uint8, a quarter of the output's bytes
    out = np.empty(planes.shape, np.float32)
    for channel in range(planes.shape[0]):
        np.take(table[channel], planes[channel], out=out[channel])
    return out


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``center_crop`` on PIL: pad with zeros when smaller, then crop the middle."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new("RGB", (max(w, size), max(h, size)))
        padded.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        image, (w, h) = padded, padded.size
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def probe_images(count: int, size: tuple[int, int] = (300, 220), seed: int = 0) -> list[Image.Image]:
    """Deterministic photo-like test images (smooth colour gradients + shapes + mild noise) for parity
    checks, speed measurement and export tracing."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.6, 0.6, (2, 3))
        canvas = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        cx, cy, r = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h), rng.uniform(20, 80)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < r**2
        canvas[disc] = rng.uniform(0, 255, 3)
        canvas += rng.normal(0, 6, canvas.shape)
        images.append(Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB"))
    return images
