"""Image decoding sized for the model: JPEG draft decoding, integer box reduction (alpha images strip by
strip), the header-only pixel count, EXIF orientation, and freed memory handed back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.engine import images
from app.engine.images import ImageLimits, decode_image, decoded_pixels
from app.errors import TooLarge, UnsupportedMedia


def _encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _gradient(size: tuple[int, int]) -> Image.Image:
    ramp = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ramp))


def test_large_jpeg_is_decoded_at_draft_size_not_full_size() -> None:
    data = _encode(_gradient((4000, 3000)), "JPEG", quality=80)
    limits = ImageLimits(target_side=224)
    img = decode_image(data, limits)
    assert min(img.size) >= 2 * 224  # never smaller than twice the model input
    assert img.size[0] * img.size[1] <= 4000 * 3000 / 16  # DCT scaling (1/4 here)
    assert decoded_pixels(data, limits) <= 4000 * 3000 / 16
    reference = _gradient((4000, 3000)).resize(img.size, Image.Resampling.BOX)
    assert np.abs(np.asarray(img, float) - np.asarray(reference, float)).mean() < 3.0


def test_without_a_target_the_image_keeps_its_size() -> None:
    data = _encode(_gradient((900, 700)), "PNG")
    assert decode_image(data).size == (900, 700)
    assert decoded_pixels(data) == 900 * 700


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_images_are_reduced_in_strips_exactly_like_pil(mode: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(images, "STRIP_PIXELS", 20_000)
    rng = np.random.default_rng(0)
    bands = 4 if mode == "RGBA" else 2
    img = Image.fromarray(rng.integers(0, 255, (1003, 2011, bands), dtype=np.uint8), mode)
    for target in (30, 71, 100):
        factor = 1003 // (2 * target)
        assert np.array_equal(np.asarray(images._shrink(img, target)), np.asarray(img.reduce(factor)))


def test_sixteen_bit_grey_matches_the_previous_conversion() -> None:
    arr = np.arange(0, 65536, 7, dtype=np.uint16)[: 100 * 90].reshape(100, 90)
    got = np.asarray(images._to_rgb(Image.fromarray(arr)))[..., 0]
    assert np.array_equal(got, (arr / 257.0).astype(np.uint8))


def test_exif_orientation_is_applied_after_reduction() -> None:
    img = Image.new("RGB", (1200, 600), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 600, 600))  # blue on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _encode(img, "JPEG", exif=exif.tobytes())
    out = decode_image(data, ImageLimits(target_side=32))
    assert out.size[1] > out.size[0]  # upright: portrait
    top = np.asarray(out)[2, out.size[0] // 2]
    assert top[2] > 150 and top[0] < 100  # the left (blue) half is now on top


def test_header_count_refuses_what_decoding_would() -> None:
    with pytest.raises(UnsupportedMedia) as err:
        decoded_pixels(b"not an image at all")
    assert err.value.code == "not_an_image"
    huge = _encode(Image.new("1", (8000, 6000)), "PNG")
    with pytest.raises(TooLarge) as err:
        decoded_pixels(huge, ImageLimits(max_pixels=10_000_000))
    assert err.value.code == "image_too_large"


def test_freed_memory_is_handed_back_after_a_large_image(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []
    monkeypatch.setattr(images, "release_freed_memory", lambda: calls.append(1))
    decode_image(_encode(Image.new("RGB", (2500, 2000)), "PNG"), ImageLimits(target_side=224))
    decode_image(_encode(Image.new("RGB", (100, 100)), "PNG"), ImageLimits(target_side=224))
    assert calls == [1]
