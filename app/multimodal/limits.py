"""Bounds on uploaded multimodal files (from Settings), checked before any sample or pixel is decoded.

Kept apart from the decoders so the server can configure them without importing the audio front end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.images import ImageLimits


@dataclass(frozen=True)
class AudioLimits:
    """What an uploaded audio file may hold, checked from its header before any sample is decoded."""

    max_seconds: float = 60.0
    max_channels: int = 8
    min_rate: int = 1_000  # below this, resampling to the model's rate would multiply the samples
    max_rate: int = 192_000


@dataclass(frozen=True)
class InputLimits:
    """Bounds on uploaded files (server settings): image size and audio rate / channels / duration."""

    image: ImageLimits = field(default_factory=ImageLimits)
    audio: AudioLimits = field(default_factory=AudioLimits)
