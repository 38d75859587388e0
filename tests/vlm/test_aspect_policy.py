"""Aspect policies before a model's transform: crop keeps the model's own centre crop, letterbox pads to a
square on white after compositing alpha on white; both agree on square images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.vlm.preprocessing import (
    LETTERBOX_FILL,
    ImagePreprocessor,
    apply_aspect_policy,
    letterbox,
    rgb_on_white,
)

PREPROCESS = ImagePreprocessor(resize=32, crop=32)


def _wide_image() -> Image.Image:
    """120 × 40: red on the left third, green in the middle, blue on the right third."""
    array = np.zeros((40, 120, 3), np.uint8)
    array[:, :40, 0] = array[:, 40:80, 1] = array[:, 80:, 2] = 255
    return Image.fromarray(array)


def test_crop_cuts_the_sides_of_a_wide_image_and_letterbox_keeps_them() -> None:
    cropped = PREPROCESS(apply_aspect_policy(_wide_image(), "crop"))
    boxed = PREPROCESS(apply_aspect_policy(_wide_image(), "letterbox"))
    # crop: only the green middle survives; letterbox: red and blue columns are still there
    assert cropped[0].max() < 0.05 and cropped[2].max() < 0.05 and cropped[1].min() > 0.95
    assert boxed[0, 16, :6].mean() > 0.9 and boxed[2, 16, -6:].mean() > 0.9
    # the padding above and below is white
    np.testing.assert_allclose(boxed[:, 0, :], 1.0, atol=1e-6)
    np.testing.assert_allclose(boxed[:, -1, :], 1.0, atol=1e-6)


def test_letterbox_centres_the_image_on_a_square_canvas() -> None:
    tall = Image.new("RGB", (10, 30), (0, 0, 0))
    out = letterbox(tall)
    assert out.size == (30, 30) and out.mode == "RGB"
    array = np.asarray(out)
    assert (array[:, :10] == LETTERBOX_FILL).all() and (array[:, 20:] == LETTERBOX_FILL).all()
    assert (array[:, 10:20] == 0).all()


def test_policies_agree_on_square_images() -> None:
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8))
    np.testing.assert_array_equal(
        PREPROCESS(apply_aspect_policy(square, "crop")), PREPROCESS(apply_aspect_policy(square, "letterbox"))
    )


@pytest.mark.parametrize("policy", ["crop", "letterbox"])
def test_alpha_is_composited_on_white_not_dropped(policy: str) -> None:
    # fully transparent pixels whose hidden colour is black must come out white
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (5, 5, 15, 15))
    out = np.asarray(apply_aspect_policy(rgba, policy))  # type: ignore[arg-type]
    assert (out[0, 0] == 255).all()
    assert tuple(out[10, 10]) == (255, 0, 0)


def test_palette_transparency_and_gray_alpha_become_rgb_on_white() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.info["transparency"] = 0
    assert tuple(np.asarray(rgb_on_white(palette))[0, 0]) == (255, 255, 255)
    gray_alpha = Image.new("LA", (4, 4), (0, 0))
    assert tuple(np.asarray(rgb_on_white(gray_alpha))[0, 0]) == (255, 255, 255)


def test_letterbox_bounds_the_canvas_of_an_extreme_aspect_ratio() -> None:
    strip = Image.new("RGB", (20_000, 50), (0, 0, 0))
    out = letterbox(strip, max_side=1000)
    assert max(out.size) <= 1000 and out.size[0] == out.size[1]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing policy"):
        apply_aspect_policy(Image.new("RGB", (4, 4)), "stretch")  # type: ignore[arg-type]
