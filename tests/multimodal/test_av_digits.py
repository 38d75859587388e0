"""The audio-visual digits builder: pieces fast, the full build (espeak-ng) marked slow."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.multimodal.av_digits import (
    AUDIO_PREPROCESSING,
    CORRUPTIONS,
    _corrupt,
    _split_indices,
    add_noise,
    build_av_digits,
    espeak_available,
    synthesise,
)
from app.multimodal.feature_dataset import load_split, read_info
from app.multimodal.pretrained import extractor_for

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


def test_add_noise_hits_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    signal = np.sin(np.linspace(0, 2000, 200_000)).astype(np.float32)
    noisy = add_noise(signal, 10.0, rng)
    snr = 10 * np.log10(np.mean(signal**2) / np.mean((noisy - signal) ** 2))
    assert snr == pytest.approx(10.0, abs=0.1)


def test_corruptions_degrade_exactly_one_modality() -> None:
    rng = np.random.default_rng(0)
    image, wave = np.full((1, 8, 8), 0.5, np.float32), np.ones(100, np.float32)
    for kind in CORRUPTIONS:
        new_image, new_wave = _corrupt(image, wave, kind, rng)
        image_changed, audio_changed = (
            not np.array_equal(new_image, image),
            not np.array_equal(new_wave, wave),
        )
        assert (image_changed, audio_changed) == (kind.startswith("image"), kind.startswith("audio"))
    assert not _corrupt(image, wave, "audio_silence", rng)[1].any()
    assert (_corrupt(image, wave, "image_occlusion", rng)[0] == 0).sum() == 25
    with pytest.raises(ValueError):
        _corrupt(image, wave, "fire", rng)


def test_splits_are_disjoint_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 20)
    splits = _split_indices(labels, seed=0, val=0.2, test=0.2)
    joined = np.concatenate(list(splits.values()))
    assert np.array_equal(np.sort(joined), np.arange(200))
    assert np.bincount(labels[splits["test"]]).tolist() == [4] * 10
    assert all(np.array_equal(splits[k], _split_indices(labels, 0, 0.2, 0.2)[k]) for k in splits)


@needs_espeak
def test_too_few_clips_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 5"):
        build_av_digits(tmp_path, clips_per_digit=4)


@needs_espeak
def test_espeak_synthesis_gives_audio() -> None:
    samples, rate = synthesise("seven", "en-us+f3", 150, 50)
    assert rate > 8000 and samples.size > rate // 4 and np.abs(samples).max() > 0.01


@pytest.mark.slow
@needs_espeak
def test_full_build_is_valid_and_reproducible(tmp_path: Path) -> None:
    first = build_av_digits(tmp_path / "a", seed=3, clips_per_digit=5, pairs_per_image=1, progress=False)
    second = build_av_digits(tmp_path / "b", seed=3, clips_per_digit=5, pairs_per_image=1, progress=False)
    info = read_info(first)
    assert info.modalities["audio"].shape == [AUDIO_PREPROCESSING.n_mels, AUDIO_PREPROCESSING.num_frames]
    sizes = {}
    for split in ("train", "val", "test", "test_corrupted"):
        data = load_split(first, split, info)
        sizes[split] = len(data)
        assert set(np.unique(data.labels)) == set(range(10))
        assert (first / f"{split}.npz").read_bytes() == (second / f"{split}.npz").read_bytes()
    assert (
        sum(sizes[s] for s in ("train", "val", "test")) == 1797 and sizes["test_corrupted"] == sizes["test"]
    )
    corrupted = load_split(first, "test_corrupted", info)
    assert set(np.unique(corrupted.meta["meta_corruption"])) == set(range(len(CORRUPTIONS)))
    assert json.loads((first / "dataset.json").read_text())["seed"] == 3
    assert len(list((first / "samples").glob("*.wav"))) == 9


@pytest.mark.slow
@needs_espeak
def test_pretrained_twin_holds_the_same_pairs_as_features(tmp_path: Path) -> None:
    raw, features = tmp_path / "raw", tmp_path / "features"
    build_av_digits(
        raw,
        seed=1,
        clips_per_digit=5,
        pairs_per_image=1,
        eval_pairs_per_image=2,
        progress=False,
        pretrained_out=features,
    )
    raw_info, info = read_info(raw), read_info(features)
    assert info.modalities["image"].shape == [1280] and info.modalities["audio"].shape == [672]
    assert info.modalities["image"].preprocessing.kind == "pretrained_image"
    assert info.modalities["audio"].preprocessing.kind == "speech_embedding"
    for split in ("train", "val", "test", "test_corrupted"):
        a, b = load_split(raw, split, raw_info), load_split(features, split, info)
        assert np.array_equal(a.labels, b.labels) and a.meta.keys() == b.meta.keys()
    test = load_split(raw, "test", raw_info)
    assert len(test) == 2 * json.loads((raw / "dataset.json").read_text())["splits"]["test"]["images"]
    # the stored image features are what the serving path computes from the same images
    image = extractor_for(info.modalities["image"].preprocessing)  # type: ignore[arg-type]
    np.testing.assert_allclose(
        image(test.inputs["image"][:4]), load_split(features, "test", info).inputs["image"][:4], atol=1e-4
    )
