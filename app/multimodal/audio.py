"""Audio front end in numpy/scipy (no torch, torchaudio or librosa): WAV decoding, resampling, silence
trimming, fixed-length framing and log-mel spectrograms.

The short-time Fourier transform follows ``torch.stft``'s conventions (what the checkpoints were trained
with): frames centred on multiples of the hop (the signal reflect-padded by n_fft / 2 on both sides),
periodic Hann window, one-sided spectrum. The mel scale and triangular filterbank follow Slaney's HTK-style
definition used by torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``: mel(f) = 2595 · log10(1 +
f / 700), filters are triangles between consecutive mel-spaced centre frequencies, evaluated on the STFT
bin frequencies.
"""

from __future__ import annotations

import io
import math
import re
from fractions import Fraction

import numpy as np
import scipy.fft
import soundfile as sf
from scipy.signal import get_window, resample_poly

from app.multimodal.limits import AudioLimits
from app.multimodal.specs import LogMelPreprocessing

LOG_EPS = 1e-6


class AudioDecodeError(ValueError):
    """The bytes are not a readable audio file (or hold no samples, or break ``AudioLimits``)."""


READ_BLOCK_FRAMES = 1 << 16
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>:?\s*")


def _reason(exc: Exception) -> str:
    """libsndfile's message without the Python object it was given (``<_io.BytesIO object at 0x…>``)."""
    return _OBJECT_REPR.sub("", str(exc)).strip().rstrip(".")[:200] or type(exc).__name__


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular HTK mel filterbank, shape (n_fft // 2 + 1, n_mels), float32, unnormalised (peak 1)."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}, {sample_rate}")
    bin_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_freqs[:, None] - lower) / (centre - lower)
    falling = (upper - bin_freqs[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def decode_wav(data: bytes, limits: AudioLimits | None = None) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG bytes with libsndfile → (mono float32 samples, sample rate).

    Rate, channels and duration are checked from the header first (``AudioLimits``); the samples are then
    read a block at a time and mixed down to mono, so memory is the mono signal, never all channels."""
    limits = limits or AudioLimits()
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            rate, channels, frames = int(audio.samplerate), int(audio.channels), int(audio.frames)
            if not limits.min_rate <= rate <= limits.max_rate:
                raise AudioDecodeError(
                    f"sample rate {rate} Hz is outside {limits.min_rate}..{limits.max_rate} Hz"
                )
            if not 1 <= channels <= limits.max_channels:
                raise AudioDecodeError(f"{channels} channels; at most {limits.max_channels} are accepted")
            max_frames = int(limits.max_seconds * rate)
            if frames > max_frames:
                raise AudioDecodeError(
                    f"the audio lasts {frames / rate:.1f} s; at most {limits.max_seconds:g} s are accepted"
                )
            mono = np.empty(max(frames, 0), np.float32)
            filled = 0
            for block in audio.blocks(READ_BLOCK_FRAMES, dtype="float32", always_2d=True, frames=frames):
                mono[filled : filled + block.shape[0]] = block.mean(axis=1)
                filled += block.shape[0]
    except AudioDecodeError:
        raise
    except Exception as exc:  # libsndfile raises its own error types (and RuntimeError) for bad files
        raise AudioDecodeError(f"unreadable audio file ({_reason(exc)})") from None
    mono = mono[:filled]
    if mono.size == 0:
        raise AudioDecodeError("the audio file holds no samples")
    if not np.isfinite(mono).all():
        raise AudioDecodeError("the audio file contains NaN or infinite samples")
    return mono, rate


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


def power_spectrogram(samples: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """|STFT|² (n_fft // 2 + 1, frames) with ``torch.stft(center=True, pad_mode="reflect")``'s framing
    and a periodic Hann window; computed in float64."""
    padded = np.pad(np.asarray(samples, dtype=np.float64), n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    spectrum = scipy.fft.rfft(frames * get_window("hann", n_fft, fftbins=True), axis=1)
    return (spectrum.real**2 + spectrum.imag**2).T


def log_mel(samples: np.ndarray, spec: LogMelPreprocessing) -> np.ndarray:
    """log(mel power + 1e-6) of a (num_samples,) waveform at ``spec.sample_rate`` → (n_mels, frames)."""
    power = power_spectrogram(samples, spec.n_fft, spec.hop_length)
    fbank = mel_filterbank(spec.n_fft, spec.n_mels, spec.sample_rate, spec.f_min, spec.f_max)
    return np.log(fbank.T.astype(np.float64) @ power + LOG_EPS).astype(np.float32)


def waveform_to_features(samples: np.ndarray, rate: int, spec: LogMelPreprocessing) -> np.ndarray:
    """The full front end: resample → trim silence → centre in ``duration_s`` → log-mel (n_mels, frames)."""
    wave = resample(np.asarray(samples, dtype=np.float32), rate, spec.sample_rate)
    wave = fit_length(trim_silence(wave, spec.trim_db), spec.num_samples)
    return log_mel(wave, spec)


def wav_bytes_to_features(
    data: bytes, spec: LogMelPreprocessing, limits: AudioLimits | None = None
) -> np.ndarray:
    """Decode an audio file and run ``waveform_to_features`` (raises ``AudioDecodeError``)."""
    samples, rate = decode_wav(data, limits)
    return waveform_to_features(samples, rate, spec)
