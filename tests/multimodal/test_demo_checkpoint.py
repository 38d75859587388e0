"""The shipped demo checkpoint (models/multimodal/av-digits-acr): small, loadable, calibrated, and right on
fresh samples drawn like the av-digits benchmark (sklearn digit + pixel noise, espeak-ng word + noise),
uploaded as the files a client sends (PNG + WAV)."""

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from sklearn.datasets import load_digits

from app.multimodal.audio import fit_length, resample, trim_silence
from app.multimodal.av_digits import (
    AUDIO_PREPROCESSING,
    WORDS,
    add_noise,
    espeak_available,
    synthesise,
)
from app.multimodal.checkpoint import load_checkpoint
from app.multimodal.service import MultimodalService

DEMO = Path(__file__).resolve().parents[2] / "models" / "multimodal" / "av-digits-acr"


def test_demo_checkpoint_is_small_and_calibrated() -> None:
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 2_500_000
    config = load_checkpoint(DEMO).config
    assert config.class_names == list(WORDS) and config.fusion.outlier_class
    assert config.calibration.calibrated and config.calibration.rule == "target_risk"
    assert MultimodalService.from_dirs([DEMO.parent]).names == ["av-digits-acr"]


@pytest.mark.slow
@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")
def test_demo_checkpoint_classifies_fresh_benchmark_like_samples() -> None:
    service = MultimodalService.from_dirs([DEMO])
    rng = np.random.default_rng(123)
    digits = load_digits()
    correct = 0
    for digit in range(10):
        index = int(np.flatnonzero(digits.target == digit)[-1])  # sklearn's last sample of each digit
        image = np.clip(digits.images[index] / 16.0 + rng.normal(0, 0.2, (8, 8)), 0, 1)
        png = io.BytesIO()
        pixels = Image.fromarray(np.round(image * 255).astype(np.uint8), "L")
        pixels.resize((64, 64), Image.Resampling.NEAREST).save(png, format="PNG")
        samples, rate = synthesise(WORDS[digit], "en-gb+m3", 150, 50)
        wave = trim_silence(resample(samples, rate, AUDIO_PREPROCESSING.sample_rate), 40.0)
        wave = add_noise(fit_length(wave, AUDIO_PREPROCESSING.num_samples), 5.0, rng)
        wav = io.BytesIO()
        sf.write(wav, wave, AUDIO_PREPROCESSING.sample_rate, format="WAV", subtype="PCM_16")
        result = service.predict("av-digits-acr", {"image": png.getvalue(), "audio": wav.getvalue()})
        correct += result["prediction"]["index"] == digit
    assert correct >= 8
