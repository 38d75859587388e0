"""The shipped demo checkpoint (models/multimodal/av-digits-acr): small, loadable, calibrated, and right on
fresh samples drawn like the av-digits benchmark (sklearn digit + pixel noise, espeak-ng word + noise)."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from app.multimodal.audio import fit_length, resample, trim_silence, waveform_to_features
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
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 1_000_000
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
        image = np.clip(digits.images[index] / 16.0 + rng.normal(0, 0.2, (8, 8)), 0, 1).astype(np.float32)
        samples, rate = synthesise(WORDS[digit], "en-gb+m3", 150, 50)
        wave = trim_silence(resample(samples, rate, AUDIO_PREPROCESSING.sample_rate), 40.0)
        wave = add_noise(fit_length(wave, AUDIO_PREPROCESSING.num_samples), 5.0, rng)
        audio = waveform_to_features(wave, AUDIO_PREPROCESSING.sample_rate, AUDIO_PREPROCESSING)
        result = service.predict(
            "av-digits-acr", {"image": image.ravel().tolist(), "audio": audio.ravel().tolist()}
        )
        correct += result["prediction"]["index"] == digit
    assert correct >= 8
