"""Audio front end in plain torch/scipy (torchaudio and librosa are not installed): WAV decoding,
resampling, silence trimming, fixed-length framing and log-mel spectrograms.

The mel scale and triangular filterbank follow Slaney's HTK-style definition used by torchaudio's
``melscale_fbanks(norm=None, mel_scale="htk")``: mel(f) = 2595 · log10(1 + f / 700), filters are triangles
between consecutive mel-spaced centre frequencies, evaluated on the STFT bin frequencies.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from app.multimodal.specs import LogMelPreprocessing

LOG_EPS = 1e-6


class AudioDecodeError(ValueError):
    """The bytes are not a readable audio file (or hold no samples)."""


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK mel filterbank, shape (n_fft // 2 + 1, n_mels), unnormalised (peak 1)."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}, {sample_rate}")
    bin_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_freqs[:, None] - lower) / (centre - lower)
    falling = (upper - bin_freqs[:, None]) / (upper - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling))).float()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG bytes with libsndfile → (mono float32 samples, sample rate)."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises its own error types (and RuntimeError) for bad files
        raise AudioDecodeError(f"unreadable audio file: {exc}") from exc
    if samples.shape[0] == 0:
        raise AudioDecodeError("the audio file holds no samples")
    mono = samples.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioDecodeError("the audio file contains NaN or infinite samples")
    return mono, int(rate)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy) from ``rate`` to ``target_rate``."""
    if rate == target_rate:
        return samples.astype(np.float32)
    ratio = Fraction(target_rate, rate).limit_denominator(1000)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def trim_silence(samples: np.ndarray, top_db: float, frame: int = 256) -> np.ndarray:
    """Drop leading/trailing frames whose RMS is more than ``top_db`` below the loudest frame."""
    n_frames = max(1, math.ceil(samples.size / frame))
    padded = np.pad(samples, (0, n_frames * frame - samples.size))
    rms = np.sqrt(np.mean(padded.reshape(n_frames, frame) ** 2, axis=1))
    peak = rms.max()
    if peak <= 0:
        return samples
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-12) / peak) > -top_db)
    return samples[loud[0] * frame : min(samples.size, (loud[-1] + 1) * frame)]


def fit_length(samples: np.ndarray, num_samples: int) -> np.ndarray:
    """Centre the signal in ``num_samples``: zero-pad both sides or crop the middle."""
    if samples.size >= num_samples:
        start = (samples.size - num_samples) // 2
        return samples[start : start + num_samples]
    left = (num_samples - samples.size) // 2
    return np.pad(samples, (left, num_samples - samples.size - left))


def log_mel(samples: np.ndarray, spec: LogMelPreprocessing) -> np.ndarray:
    """log(mel power + 1e-6) of a (num_samples,) waveform at ``spec.sample_rate`` → (n_mels, frames)."""
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    stft = torch.stft(
        wave,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        window=torch.hann_window(spec.n_fft),
        center=True,
        return_complex=True,
    )
    power = stft.abs() ** 2  # (freq, frames)
    fbank = mel_filterbank(spec.n_fft, spec.n_mels, spec.sample_rate, spec.f_min, spec.f_max)
    return torch.log(fbank.T @ power + LOG_EPS).numpy().astype(np.float32)


def waveform_to_features(samples: np.ndarray, rate: int, spec: LogMelPreprocessing) -> np.ndarray:
    """The full front end: resample → trim silence → centre in ``duration_s`` → log-mel (n_mels, frames)."""
    wave = resample(np.asarray(samples, dtype=np.float32), rate, spec.sample_rate)
    wave = fit_length(trim_silence(wave, spec.trim_db), spec.num_samples)
    return log_mel(wave, spec)


def wav_bytes_to_features(data: bytes, spec: LogMelPreprocessing) -> np.ndarray:
    """Decode an audio file and run ``waveform_to_features`` (raises ``AudioDecodeError``)."""
    samples, rate = decode_wav(data)
    return waveform_to_features(samples, rate, spec)
