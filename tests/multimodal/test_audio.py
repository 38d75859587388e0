"""The numpy/scipy audio front end (and its parity with the torch.stft front end it replaced)."""

import numpy as np
import pytest
from mm_helpers import TINY_AUDIO, wav_bytes

from app.multimodal.audio import (
    AudioDecodeError,
    decode_wav,
    fit_length,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    resample,
    trim_silence,
    wav_bytes_to_features,
)
from app.multimodal.specs import LogMelPreprocessing


def test_mel_scale_round_trip_and_anchor() -> None:
    assert hz_to_mel(700.0) == pytest.approx(2595 * np.log10(2))
    freqs = np.array([0.0, 100.0, 1000.0, 8000.0])
    assert np.allclose(mel_to_hz(hz_to_mel(freqs)), freqs)


def test_filterbank_triangles() -> None:
    fb = mel_filterbank(n_fft=512, n_mels=10, sample_rate=16000, f_min=0.0, f_max=8000.0)
    assert fb.shape == (257, 10)
    assert fb.min() >= 0 and fb.max() <= 1
    # each filter rises then falls: a single peak, and consecutive filters peak at increasing bins
    peaks = fb.argmax(axis=0)
    assert (np.diff(peaks) > 0).all()
    with pytest.raises(ValueError):
        mel_filterbank(512, 10, 16000, 100.0, 9000.0)


def test_log_mel_peaks_at_the_tone_frequency() -> None:
    t = np.arange(TINY_AUDIO.num_samples) / TINY_AUDIO.sample_rate
    tone = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    features = log_mel(tone, TINY_AUDIO)
    assert features.shape == (TINY_AUDIO.n_mels, TINY_AUDIO.num_frames)
    centres = mel_to_hz(np.linspace(hz_to_mel(TINY_AUDIO.f_min), hz_to_mel(TINY_AUDIO.f_max), 10))[1:-1]
    assert features.mean(axis=1).argmax() == np.abs(centres - 1000.0).argmin()


def _torch_log_mel(samples: np.ndarray, spec: LogMelPreprocessing) -> np.ndarray:
    """The front end the checkpoints were trained with (torch.stft, float32), kept here as the reference."""
    torch = pytest.importorskip("torch")
    stft = torch.stft(
        torch.from_numpy(samples),
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        window=torch.hann_window(spec.n_fft),
        center=True,
        return_complex=True,
    )
    fbank = torch.from_numpy(
        mel_filterbank(spec.n_fft, spec.n_mels, spec.sample_rate, spec.f_min, spec.f_max)
    )
    return torch.log(fbank.T @ (stft.abs() ** 2) + 1e-6).numpy()


@pytest.mark.parametrize("spec", [TINY_AUDIO, LogMelPreprocessing()], ids=["tiny", "default"])
def test_log_mel_matches_the_torch_stft_front_end(spec: LogMelPreprocessing) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(spec.num_samples) / spec.sample_rate
    waves = {
        "noise": 0.3 * rng.standard_normal(spec.num_samples),
        "tone": 0.5 * np.sin(2 * np.pi * 440.0 * t),
        "chirp": 0.8 * np.sin(2 * np.pi * (100 + 2000 * t) * t) * np.hanning(spec.num_samples),
        "silence": np.zeros(spec.num_samples),
    }
    for name, wave in waves.items():
        wave = wave.astype(np.float32)
        ours, reference = log_mel(wave, spec), _torch_log_mel(wave, spec)
        assert ours.shape == reference.shape and ours.dtype == np.float32
        # torch computes in float32: bins near the 1e-6 floor differ by its rounding, the rest by < 1e-5
        delta = np.abs(ours - reference)
        assert delta.max() < 5e-3 and delta.mean() < 1e-4, (name, delta.max(), delta.mean())
        loud = reference > np.log(1e-4)
        assert delta[loud].max(initial=0.0) < 1e-4, name


def test_fit_length_and_trim() -> None:
    assert fit_length(np.ones(3), 7).tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert fit_length(np.arange(10.0), 4).tolist() == [3, 4, 5, 6]
    signal = np.r_[np.zeros(1024), np.ones(512), np.zeros(1024)].astype(np.float32)
    trimmed = trim_silence(signal, top_db=40, frame=256)
    assert trimmed.size == 512 and (trimmed == 1).all()
    assert trim_silence(np.zeros(100), 40).size == 100  # silence stays silence


def test_resample_length() -> None:
    assert resample(np.zeros(22050, dtype=np.float32), 22050, 16000).size == 16000


def test_decode_and_features_from_wav_bytes() -> None:
    samples, rate = decode_wav(wav_bytes(rate=8000))
    assert rate == 8000 and samples.ndim == 1
    assert wav_bytes_to_features(wav_bytes(), TINY_AUDIO).shape == (TINY_AUDIO.n_mels, TINY_AUDIO.num_frames)
    with pytest.raises(AudioDecodeError, match="unreadable"):
        decode_wav(b"RIFF....not a wav")
