"""ImagePreprocessor internals: the table-lookup normalisation is bit-identical to the float arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.vlm.preprocessing import ImagePreprocessor, probe_images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _arithmetic(image: Image.Image, prep: ImagePreprocessor) -> np.ndarray:
    """What the preprocessor computed before the lookup table: resize, crop, then float32 arithmetic."""
    resized = prep._resize(image.convert("RGB"))
    if prep.crop is not None:
        w, h = resized.size
        top, left = round((h - prep.crop) / 2.0), round((w - prep.crop) / 2.0)
        resized = resized.crop((left, top, left + prep.crop, top + prep.crop))
    array = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    array = (array - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


@pytest.mark.parametrize(
    "prep",
    [
        ImagePreprocessor(resize=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD),
        ImagePreprocessor(resize=64, resize_mode="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        ImagePreprocessor(resize=40, crop=32, interpolation="bilinear"),
    ],
)
def test_lookup_normalisation_is_bit_identical_to_the_arithmetic(prep: ImagePreprocessor) -> None:
    rng = np.random.default_rng(0)
    images = [*probe_images(3), Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))]
    images.append(images[0].convert("L"))  # other modes are converted first
    for image in images:
        out = prep(image)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert out.shape == (3, prep.output_size, prep.output_size)
        np.testing.assert_array_equal(out, _arithmetic(image, prep))
