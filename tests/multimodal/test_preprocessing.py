"""Request payload → model input, with clear errors."""

import io

import numpy as np
import pytest
from mm_helpers import TINY_AUDIO, image_audio_spec, png_bytes, wav_bytes
from PIL import Image

from app.multimodal.preprocessing import InputError, file_input, image_input, vector_input
from app.multimodal.specs import ImagePreprocessing, ModalitySpec

SPEC = image_audio_spec()
IMAGE, AUDIO = SPEC.modalities


def test_vector_input_reshapes_and_validates() -> None:
    assert vector_input([0.5] * 64, IMAGE).shape == (1, 8, 8)
    with pytest.raises(InputError, match="expected 64 values"):
        vector_input([0.5] * 63, IMAGE)
    with pytest.raises(InputError, match="NaN or infinite"):
        vector_input([float("inf")] + [0.0] * 63, IMAGE)
    with pytest.raises(InputError, match="list of numbers"):
        vector_input(["a"] * 64, IMAGE)  # type: ignore[list-item]


def test_image_input_box_resizes_to_unit_range() -> None:
    pixels = np.zeros((16, 16), np.uint8)
    pixels[:8, :8] = 255  # top-left quadrant white → top-left 4×4 of the 8×8 result is 1.0
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    array = file_input(buffer.getvalue(), IMAGE)
    assert array.shape == (1, 8, 8) and array.dtype == np.float32
    assert np.allclose(array[0, :4, :4], 1.0) and np.allclose(array[0, 4:, :], 0.0)
    inverted = image_input(buffer.getvalue(), IMAGE, ImagePreprocessing(height=8, width=8, invert=True))
    assert np.allclose(inverted, 1.0 - array)
    rgb = ModalitySpec(
        name="rgb",
        encoder="image_cnn",
        input_shape=[3, 4, 4],
        embed_dim=4,
        preprocessing=ImagePreprocessing(height=4, width=4, channels=3),
    )
    assert file_input(png_bytes(), rgb).shape == (3, 4, 4)


def test_audio_input_and_errors() -> None:
    assert file_input(wav_bytes(), AUDIO).shape == (TINY_AUDIO.n_mels, TINY_AUDIO.num_frames)
    with pytest.raises(InputError, match="unreadable audio"):
        file_input(b"definitely not audio", AUDIO)
    with pytest.raises(InputError, match="not an image"):
        file_input(b"definitely not an image", IMAGE)
    with pytest.raises(InputError, match="empty"):
        file_input(b"", IMAGE)
    vector = ModalitySpec(name="video", encoder="features", input_shape=[5], embed_dim=5)
    with pytest.raises(InputError, match="not a file"):
        file_input(b"1234", vector)
