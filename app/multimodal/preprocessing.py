"""Request payload → model input array, per the checkpoint's ``ModalitySpec.preprocessing``.

Each function raises ``InputError`` with a client-readable message; the service maps it to a 4xx.
Files for a modality served through a frozen pretrained extractor (``pretrained.py``) become a
``RawInput`` (decoded image / fixed-length waveform); the service runs the extractor on them, batched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from PIL import Image

from app.engine.images import ImageLimits, decode_image
from app.errors import TrustserveError
from app.multimodal.audio import AudioDecodeError, decode_wav, wav_bytes_to_features
from app.multimodal.limits import AudioLimits, InputLimits
from app.multimodal.pretrained import waveform_input
from app.multimodal.specs import (
    ImagePreprocessing,
    LogMelPreprocessing,
    ModalitySpec,
    PretrainedImagePreprocessing,
    RawInput,
    SpeechEmbeddingPreprocessing,
)


class InputError(ValueError):
    """A modality payload that cannot be turned into the model's input."""


def vector_input(values: Sequence[float], spec: ModalitySpec) -> np.ndarray:
    """A JSON feature vector → float32 array of ``spec.input_shape`` (flattened length must match)."""
    expected = math.prod(spec.input_shape)
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"modality {spec.name!r}: the feature vector must be a list of numbers") from exc
    if array.size != expected:
        raise InputError(
            f"modality {spec.name!r}: expected {expected} values (shape {spec.input_shape}), got {array.size}"
        )
    if not np.isfinite(array).all():
        raise InputError(f"modality {spec.name!r}: the feature vector contains NaN or infinite values")
    return array.reshape(spec.input_shape)


def image_input(
    data: bytes, spec: ModalitySpec, prep: ImagePreprocessing, limits: ImageLimits | None = None
) -> np.ndarray:
    """Image bytes → (C, H, W) float32 in [0, 1]: the server's safe decoding (limits, EXIF, odd modes;
    decoded no larger than twice the model's input), then convert, box-resize, divide by 255, invert."""
    limits = replace(limits or ImageLimits(), target_side=max(prep.height, prep.width))
    try:
        rgb = decode_image(data, limits, name=f"modality {spec.name!r}")
    except TrustserveError as exc:
        raise InputError(exc.message) from exc
    converted = rgb.convert("L") if prep.channels == 1 else rgb
    resized = converted.resize((prep.width, prep.height), Image.Resampling.BOX)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    if prep.invert:
        array = 1.0 - array
    return array[None] if prep.channels == 1 else array.transpose(2, 0, 1)


def audio_input(
    data: bytes, spec: ModalitySpec, prep: LogMelPreprocessing, limits: AudioLimits | None = None
) -> np.ndarray:
    """Audio file bytes (WAV/FLAC/OGG) → (n_mels, frames) log-mel."""
    try:
        return wav_bytes_to_features(data, prep, limits)
    except AudioDecodeError as exc:
        raise InputError(f"modality {spec.name!r}: {exc}") from exc


def speech_waveform_input(
    data: bytes, spec: ModalitySpec, prep: SpeechEmbeddingPreprocessing, limits: AudioLimits | None = None
) -> RawInput:
    """Audio file bytes → the fixed-length 16 kHz waveform the speech_embedding extractor takes (rate,
    channels and duration checked from the header before decoding, as for the log-mel front end)."""
    try:
        samples, rate = decode_wav(data, limits)
    except AudioDecodeError as exc:
        raise InputError(f"modality {spec.name!r}: {exc}") from exc
    return RawInput(waveform_input(samples, rate, prep))


def file_input(data: bytes, spec: ModalitySpec, limits: InputLimits | None = None) -> np.ndarray | RawInput:
    """A file upload for ``spec`` → its model input (images and audio; vectors must come as JSON lists),
    or a ``RawInput`` for the modality's pretrained extractor."""
    prep = spec.preprocessing
    limits = limits or InputLimits()
    if not data:
        raise InputError(f"modality {spec.name!r}: the uploaded file is empty")
    if isinstance(prep, ImagePreprocessing):
        return image_input(data, spec, prep, limits.image)
    if isinstance(prep, LogMelPreprocessing):
        return audio_input(data, spec, prep, limits.audio)
    if isinstance(prep, PretrainedImagePreprocessing):
        return RawInput(image_input(data, spec, prep.image, limits.image))
    if isinstance(prep, SpeechEmbeddingPreprocessing):
        return speech_waveform_input(data, spec, prep, limits.audio)
    raise InputError(
        f"modality {spec.name!r} takes a feature vector of {math.prod(spec.input_shape)} numbers, not a file"
    )
