"""The audio-visual digits benchmark, built from scratch on this machine.

Each sample pairs a scikit-learn handwritten digit (8×8, 1,797 images) with a spoken digit of the same
class synthesised by Debian's espeak-ng (English voices × voice variants, random speed, pitch and word
gap) plus white noise at a random SNR. Images and speech clips are each split train/val/test with the
seed, so test pairs use unseen images *and* unseen recordings.

``test_corrupted`` holds the test pairs with exactly one modality degraded per sample (uniformly drawn):
image → Gaussian noise or occlusion of a 5×5 block; audio → noise at −10…−2 dB SNR or silence. Its
``meta_corrupted_modality`` / ``meta_corruption`` arrays say which (indices into ``CORRUPTIONS``).

Output: the feature-file format of ``feature_dataset.py`` (``image`` (1, 8, 8) in [0, 1], ``audio``
log-mel (24, 41)), plus a few ready-to-upload samples (PNG + WAV) under ``samples/``. With
``pretrained_out`` the same pairs are also written, in the same format, as frozen pretrained features
(``pretrained.py``: EfficientNet-Lite0 1280-d for the image, speech_embedding 672-d for the audio),
extracted once from the very images and waveforms of the raw dataset.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from app.multimodal.audio import decode_wav, fit_length, resample, trim_silence, waveform_to_features
from app.multimodal.feature_dataset import DatasetInfo, MultimodalSplit, save_split, write_info
from app.multimodal.pretrained import extractor_for, waveform_input
from app.multimodal.specs import (
    ImagePreprocessing,
    LogMelPreprocessing,
    PretrainedImagePreprocessing,
    SpeechEmbeddingPreprocessing,
)

log = logging.getLogger(__name__)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# fmt: off
BASE_VOICES = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
# espeak-ng voice variants (voices/!v): male, female, Klatt formant synthesis and character voices
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "croak",
    "Andy", "Annie", "Gene", "Mike", "Storm", "Tweaky", "grandma", "grandpa", "edward", "linda",
)
# fmt: on
SPEED_RANGE = (110, 220)  # words per minute
PITCH_RANGE = (15, 85)  # espeak-ng 0..99
CLEAN_SNR_DB = (-16.0, 4.0)
CLEAN_IMAGE_NOISE = (0.1, 0.6)  # σ of additive Gaussian pixel noise, drawn per pair
CORRUPTIONS = ("image_noise", "image_occlusion", "audio_noise", "audio_silence")
IMAGE_PREPROCESSING = ImagePreprocessing(height=8, width=8, channels=1)
AUDIO_PREPROCESSING = LogMelPreprocessing(n_fft=1024, hop_length=512, n_mels=24)
PRETRAINED_IMAGE = PretrainedImagePreprocessing(image=IMAGE_PREPROCESSING, extractor="lite0", input_size=64)
PRETRAINED_AUDIO = SpeechEmbeddingPreprocessing(duration_s=AUDIO_PREPROCESSING.duration_s, pooling="flatten")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SpeechClip:
    """One synthesised utterance (trimmed, at the front end's sample rate) and how it was made."""

    digit: int
    voice: str
    speed: int
    pitch: int
    samples: np.ndarray


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesise(word: str, voice: str, speed: int, pitch: int, gap: int = 0) -> tuple[np.ndarray, int]:
    """Run ``espeak-ng --stdout`` and decode the WAV it writes."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap), "--stdout", word]
    result = subprocess.run(cmd, capture_output=True, check=True, timeout=30)
    return decode_wav(result.stdout)


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` relative to the signal's mean power."""
    power = float(np.mean(samples**2)) or 1e-8
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), samples.shape)
    return (samples + noise).astype(np.float32)


def _split_indices(labels: np.ndarray, seed: int, val: float, test: float) -> dict[str, np.ndarray]:
    idx = np.arange(labels.size)
    train_val, test_idx = train_test_split(idx, test_size=test, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(
        train_val, test_size=val / (1 - test), stratify=labels[train_val], random_state=seed + 1
    )
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def synthesise_clips(
    clips_per_digit: int, rng: np.random.Generator, workers: int = 2, progress: bool = True
) -> list[SpeechClip]:
    """``clips_per_digit`` utterances per digit with random voice, variant, speed and pitch."""
    jobs = []
    for digit in range(len(WORDS)):
        for _ in range(clips_per_digit):
            voice = f"{rng.choice(BASE_VOICES)}+{rng.choice(VARIANTS)}"
            jobs.append((digit, voice, int(rng.integers(*SPEED_RANGE)), int(rng.integers(*PITCH_RANGE))))

    def run(job: tuple[int, str, int, int]) -> SpeechClip:
        digit, voice, speed, pitch = job
        samples, rate = synthesise(WORDS[digit], voice, speed, pitch)
        wave = trim_silence(resample(samples, rate, AUDIO_PREPROCESSING.sample_rate), 40.0)
        return SpeechClip(digit, voice, speed, pitch, wave)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(run, jobs)
        return list(tqdm(results, total=len(jobs), desc="espeak-ng", disable=not progress))


def _pair_waveform(clip: SpeechClip, rng: np.random.Generator) -> np.ndarray:
    wave = fit_length(clip.samples, AUDIO_PREPROCESSING.num_samples)
    return add_noise(wave, float(rng.uniform(*CLEAN_SNR_DB)), rng)


def _corrupt(
    image: np.ndarray, wave: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    image, wave = image.copy(), wave.copy()
    if kind == "image_noise":
        image = np.clip(image + rng.normal(0.0, 0.6, image.shape), 0.0, 1.0).astype(np.float32)
    elif kind == "image_occlusion":
        r, c = rng.integers(0, 4, size=2)
        image[:, r : r + 5, c : c + 5] = 0.0
    elif kind == "audio_noise":
        wave = add_noise(wave, float(rng.uniform(-10.0, -2.0)), rng)
    elif kind == "audio_silence":
        wave = np.zeros_like(wave)
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return image, wave


def build_av_digits(
    out: Path,
    seed: int = 0,
    clips_per_digit: int = 60,
    pairs_per_image: int = 2,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    workers: int = 2,
    progress: bool = True,
    samples_per_split: int = 3,
    eval_pairs_per_image: int | None = None,
    pretrained_out: Path | None = None,
) -> Path:
    """Build the benchmark into ``out`` (train/val/test/test_corrupted .npz + dataset.json + samples/).

    ``pairs_per_image`` pairs each training image with that many clips; ``eval_pairs_per_image`` (default:
    the same) does so for val and test, so the evaluation splits can hold enough errors to rank without
    changing the training data. ``pretrained_out``: also write the pretrained-feature dataset there.
    """
    if clips_per_digit * min(val_fraction, test_fraction) < 1:
        raise ValueError(
            f"clips_per_digit={clips_per_digit} leaves no clip of some digit in val or test; "
            f"need at least {math.ceil(1 / min(val_fraction, test_fraction))}"
        )
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny STFTs: threading only adds contention
    try:
        return _build(
            out,
            seed,
            clips_per_digit,
            {
                "train": pairs_per_image,
                "val": eval_pairs_per_image or pairs_per_image,
                "test": eval_pairs_per_image or pairs_per_image,
            },
            val_fraction,
            test_fraction,
            workers,
            progress,
            samples_per_split,
            pretrained_out,
        )
    finally:
        torch.set_num_threads(threads)


class _PretrainedWriter:
    """Writes the pretrained-feature twin of each split (same pairs, labels and meta arrays)."""

    def __init__(self, out: Path, progress: bool) -> None:
        self.out, self.progress = Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.image = extractor_for(PRETRAINED_IMAGE)
        self.audio = extractor_for(PRETRAINED_AUDIO)

    def write(self, split: str, data: MultimodalSplit, waves: list[np.ndarray]) -> None:
        raw_audio = np.stack(
            [waveform_input(w, AUDIO_PREPROCESSING.sample_rate, PRETRAINED_AUDIO) for w in waves]
        )
        image, audio = [], []
        chunk = 256
        for start in tqdm(range(0, len(data), chunk), desc=f"features {split}", disable=not self.progress):
            image.append(self.image(data.inputs["image"][start : start + chunk]))
            audio.append(self.audio(raw_audio[start : start + chunk]))
        features = {"image": np.concatenate(image), "audio": np.concatenate(audio)}
        save_split(self.out, split, MultimodalSplit(features, data.labels, data.meta))

    def write_info(self, raw: DatasetInfo) -> None:
        extra = raw.model_dump(exclude={"format", "name", "class_names", "modalities"})
        info = DatasetInfo(
            name="av-digits-pretrained",
            class_names=raw.class_names,
            modalities={
                "image": {"shape": [self.image.dim], "preprocessing": PRETRAINED_IMAGE},
                "audio": {"shape": [self.audio.dim], "preprocessing": PRETRAINED_AUDIO},
            },
            **extra,
            features_of="av-digits (the same pairs, extracted from its images and waveforms)",
        )
        write_info(self.out, info)


def _build(
    out: Path,
    seed: int,
    clips_per_digit: int,
    pairs: dict[str, int],
    val_fraction: float,
    test_fraction: float,
    workers: int,
    progress: bool,
    samples_per_split: int,
    pretrained_out: Path | None,
) -> Path:
    out = Path(out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    pretrained = _PretrainedWriter(pretrained_out, progress) if pretrained_out is not None else None
    rng = np.random.default_rng(seed)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    image_split = _split_indices(digits.target, seed, val_fraction, test_fraction)

    clips = synthesise_clips(clips_per_digit, rng, workers, progress)
    clip_digits = np.array([c.digit for c in clips])
    clip_split = _split_indices(clip_digits, seed + 7, val_fraction, test_fraction)
    to_features: Callable[[np.ndarray], np.ndarray] = lambda w: waveform_to_features(  # noqa: E731
        w, AUDIO_PREPROCESSING.sample_rate, AUDIO_PREPROCESSING
    )

    summary: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        by_digit = {d: [clips[i] for i in clip_split[split] if clips[i].digit == d] for d in range(10)}
        pair_images, waves, labels = [], [], []
        for index in image_split[split]:
            label = int(digits.target[index])
            for _ in range(pairs[split]):
                clip = by_digit[label][rng.integers(len(by_digit[label]))]
                sigma = rng.uniform(*CLEAN_IMAGE_NOISE)
                noisy = np.clip(images[index] + rng.normal(0.0, sigma, images[index].shape), 0.0, 1.0)
                pair_images.append(noisy.astype(np.float32))
                waves.append(_pair_waveform(clip, rng))
                labels.append(label)
        audio = np.stack([to_features(w) for w in tqdm(waves, desc=f"log-mel {split}", disable=not progress)])
        data = MultimodalSplit({"image": np.stack(pair_images), "audio": audio}, np.array(labels))
        save_split(out, split, data)
        if pretrained is not None:
            pretrained.write(split, data, waves)
        _write_samples(out / "samples", split, data, waves, samples_per_split)
        summary[split] = {
            "pairs": len(labels),
            "images": len(image_split[split]),
            "clips": len(clip_split[split]),
        }
        if split == "test":
            kinds = rng.integers(len(CORRUPTIONS), size=len(labels))
            corrupted_images, corrupted_waves = [], []
            for image, wave, kind in zip(pair_images, waves, kinds):
                ci, cw = _corrupt(image, wave, CORRUPTIONS[kind], rng)
                corrupted_images.append(ci)
                corrupted_waves.append(cw)
            corrupted = MultimodalSplit(
                {
                    "image": np.stack(corrupted_images),
                    "audio": np.stack([to_features(w) for w in corrupted_waves]),
                },
                np.array(labels),
                {
                    "meta_corruption": kinds.astype(np.int64),
                    "meta_corrupted_modality": (kinds >= 2).astype(np.int64),  # 0 image, 1 audio
                },
            )
            save_split(out, "test_corrupted", corrupted)
            if pretrained is not None:
                pretrained.write("test_corrupted", corrupted, corrupted_waves)
            summary["test_corrupted"] = {"pairs": len(labels)}

    info = DatasetInfo(
        name="av-digits",
        class_names=list(WORDS),
        modalities={
            "image": {"shape": [1, 8, 8], "preprocessing": IMAGE_PREPROCESSING},
            "audio": {
                "shape": [AUDIO_PREPROCESSING.n_mels, AUDIO_PREPROCESSING.num_frames],
                "preprocessing": AUDIO_PREPROCESSING,
            },
        },
        seed=seed,
        clips_per_digit=clips_per_digit,
        pairs_per_image=pairs,
        splits=summary,
        corruptions=list(CORRUPTIONS),
        voices={
            "base": list(BASE_VOICES),
            "variants": list(VARIANTS),
            "speed": SPEED_RANGE,
            "pitch": PITCH_RANGE,
        },
        clean_snr_db=CLEAN_SNR_DB,
        clean_image_noise=CLEAN_IMAGE_NOISE,
    )
    write_info(out, info)
    if pretrained is not None:
        pretrained.write_info(info)
    return out


def _write_samples(
    folder: Path, split: str, data: MultimodalSplit, waves: list[np.ndarray], count: int
) -> None:
    """A few pairs as files a client can upload: <split>_<i>_<word>.png (8×8 ×8 nearest) and .wav."""
    for i in range(min(count, len(data))):
        word = WORDS[int(data.labels[i])]
        pixels = np.round(data.inputs["image"][i, 0] * 255).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((64, 64), Image.Resampling.NEAREST).save(
            folder / f"{split}_{i}_{word}.png"
        )
        buffer = io.BytesIO()
        sf.write(buffer, waves[i], AUDIO_PREPROCESSING.sample_rate, format="WAV", subtype="PCM_16")
        (folder / f"{split}_{i}_{word}.wav").write_bytes(buffer.getvalue())
