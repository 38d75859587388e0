"""Safe image decoding: bytes from a client -> an upright RGB PIL image, or a clear 4xx ``APIError``.

Guards: empty input, non-image bytes, unsupported formats, truncated/corrupt files, decompression bombs
(pixel count is checked from the header, before any pixel is decoded), absurd sides. Odd but valid images
are normalised: CMYK, 16-bit and float grayscale, palette, alpha (composited on white), animated files
(first frame), EXIF orientation.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from app.api.errors import APIError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey picture
Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit from the header (see below)

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits (from Settings)."""

    max_pixels: int = 40_000_000
    max_side: int = 20_000
    min_side: int = 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; alpha is composited on white, high-bit-depth data rescaled to 8 bits."""
    if img.mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        else:  # 32-bit int or float: stretch the observed range
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def decode_image(data: bytes, limits: ImageLimits | None = None, *, name: str = "image") -> Image.Image:
    """Decode one uploaded image into an upright RGB image, or raise a 4xx APIError naming ``name``."""
    limits = limits or ImageLimits()
    if not data:
        raise APIError(400, "empty_image", f"{name}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise APIError(
                    415,
                    "unsupported_image_format",
                    f"{name}: format {fmt} is not accepted; send JPEG, PNG, GIF, WebP, BMP or TIFF",
                )
            width, height = img.size
            if width < limits.min_side or height < limits.min_side:
                raise APIError(422, "image_too_small", f"{name}: {width}x{height} pixels is too small")
            if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
                raise APIError(
                    413,
                    "image_too_large",
                    f"{name}: {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels "
                    f"and {limits.max_side} pixels per side",
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP/multi-page TIFF: the first frame
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except APIError:
        raise
    except UnidentifiedImageError:
        raise APIError(
            415, "not_an_image", f"{name}: the bytes are not an image in any supported format"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise APIError(413, "image_too_large", f"{name}: decompression bomb refused") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise APIError(
            422, "corrupt_image", f"{name}: the image is truncated or corrupt ({type(exc).__name__})"
        ) from None
    except MemoryError:
        raise APIError(413, "image_too_large", f"{name}: the image needs too much memory to decode") from None
