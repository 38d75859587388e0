"""Safe image decoding: bytes from a client -> an upright RGB PIL image, or a clear domain error
(``app.errors``: unsupported format, too large, corrupt, empty).

Guards: empty input, non-image bytes, unsupported formats, truncated/corrupt files, decompression bombs
(pixel count is checked from the header, before any pixel is decoded), absurd sides. Odd but valid images
are normalised: CMYK, 16-bit and float grayscale, palette, alpha (composited on white), animated files
(first frame), EXIF orientation.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from app.engine.memory import release_freed_memory
from app.errors import InvalidInput, MalformedInput, TooLarge, TrustserveError, UnsupportedMedia

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey picture
Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit from the header (see below)

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits (from Settings) and the model's input side: an image is decoded just large enough
    for it (``target_side``: JPEG draft decoding, then an integer box reduction), never kept full size."""

    max_pixels: int = 40_000_000
    max_side: int = 20_000
    min_side: int = 1
    target_side: int | None = None


# an image is decoded (and kept) at no less than this many times the model's input side
OVERSAMPLE = 2
STRIP_PIXELS = 1 << 20  # alpha images are reduced a strip of about this many pixels at a time
RELEASE_AFTER_PIXELS = 4_000_000  # give freed heap memory back to the OS after decoding a larger image
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float grayscale -> 8-bit "L" (16-bit: value // 257; others: the observed
    range stretched to 0..255)."""
    if img.mode.startswith("I;16"):
        arr = np.array(img)  # one copy, divided in place
        np.floor_divide(arr, 257, out=arr)
    else:  # 32-bit int or float: stretch the observed range
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; alpha is composited on white, high-bit-depth data rescaled to 8 bits."""
    if img.mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        img = _high_bit_depth_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _shrink(img: Image.Image, target_side: int | None) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the shorter side ≥ OVERSAMPLE × target_side
    (before any colour conversion, so conversions work on the small image)."""
    if target_side is None:
        return img
    factor = min(img.size) // (OVERSAMPLE * target_side)
    if factor < 2:
        return img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode.startswith("I;16"):
        img = _high_bit_depth_to_l(img)
    if img.mode not in {"RGBA", "LA"}:
        return img.reduce(factor)
    # PIL reduces alpha images through a full-size premultiplied copy: reduce strips of rows instead
    # (aligned on the factor, so the result is the same)
    width, height = img.size
    out = Image.new(img.mode, (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    for top in range(0, height, rows):
        out.paste(img.crop((0, top, width, min(height, top + rows))).reduce(factor), (0, top // factor))
    return out


def _open_checked(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    """Open (header only), check format and size, and set JPEG draft decoding for the model's input."""
    img = Image.open(io.BytesIO(data))
    fmt = img.format
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedMedia(
            f"{name}: format {fmt} is not accepted; send JPEG, PNG, GIF, WebP, BMP or TIFF",
            code="unsupported_image_format",
        )
    width, height = img.size
    if width < limits.min_side or height < limits.min_side:
        raise InvalidInput(f"{name}: {width}x{height} pixels is too small", code="image_too_small")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise TooLarge(
            f"{name}: {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels "
            f"and {limits.max_side} pixels per side",
            code="image_too_large",
        )
    if fmt in {"JPEG", "MPO"} and limits.target_side is not None:
        keep = OVERSAMPLE * limits.target_side / min(width, height)
        if keep < 1:  # DCT-domain downscaling by 1/2, 1/4 or 1/8, to no less than the requested size
            img.draft(img.mode, (math.ceil(width * keep), math.ceil(height * keep)))
    return img


def _refusal(exc: BaseException, name: str) -> TrustserveError:
    """The domain error for an exception raised while reading an image."""
    if isinstance(exc, UnidentifiedImageError):
        return UnsupportedMedia(
            f"{name}: the bytes are not an image in any supported format", code="not_an_image"
        )
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return TooLarge(f"{name}: decompression bomb refused", code="image_too_large")
    if isinstance(exc, MemoryError):
        return TooLarge(f"{name}: the image needs too much memory to decode", code="image_too_large")
    return InvalidInput(
        f"{name}: the image is truncated or corrupt ({type(exc).__name__})", code="corrupt_image"
    )


_READ_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    MemoryError,
)


@contextlib.contextmanager
def _reading(data: bytes, limits: ImageLimits, name: str) -> Iterator[Image.Image]:
    """The opened, header-checked image; a bad file becomes the domain error naming ``name``, both while
    opening and while the caller reads it."""
    if not data:
        raise MalformedInput(f"{name}: the file is empty (0 bytes)", code="empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield _open_checked(data, limits, name)
    except TrustserveError:
        raise
    except _READ_ERRORS as exc:
        raise _refusal(exc, name) from None


def decoded_pixels(data: bytes, limits: ImageLimits | None = None, *, name: str = "image") -> int:
    """Pixels ``decode_image`` will decode for ``data`` (JPEG: at its draft size), read from the header
    only; raises the same domain error as ``decode_image`` for a bad header."""
    with _reading(data, limits or ImageLimits(), name) as img:
        return int(img.size[0] * img.size[1])


def decode_image(
    data: bytes,
    limits: ImageLimits | None = None,
    *,
    name: str = "image",
    check_pixels: Callable[[int], None] | None = None,
) -> Image.Image:
    """Decode one uploaded image into an upright RGB image, or raise a domain error naming ``name``.
    With ``limits.target_side`` the result is only as large as the model needs (≥ 2× its input side).
    ``check_pixels`` is called with the pixels the image will decode to (``decoded_pixels``, from the
    same header read) before any pixel is decoded: it refuses by raising (a request's pixel budget)."""
    limits = limits or ImageLimits()
    with _reading(data, limits, name) as img:
        if check_pixels is not None:
            check_pixels(int(img.size[0] * img.size[1]))
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF/WebP/multi-page TIFF: the first frame
        orientation = img.getexif().get(_EXIF_ORIENTATION)
        full_size = img.size[0] * img.size[1]
        img.load()
        img = _shrink(img, limits.target_side)
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        img = _to_rgb(img)
    if full_size >= RELEASE_AFTER_PIXELS:
        release_freed_memory()
    return img
