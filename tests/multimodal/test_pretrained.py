"""Frozen pretrained extractors (EfficientNet-Lite0, speech_embedding) and serving checkpoints that use them:
files go through the extractor inside the batched forward, feature vectors skip it."""

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mm_helpers import (
    TINY_PRETRAINED_IMAGE,
    TINY_SPEECH,
    png_bytes,
    pretrained_feature_spec,
    save_random_checkpoint,
    wav_bytes,
)

from app.errors import InvalidInput
from app.multimodal.preprocessing import RawInput, file_input
from app.multimodal.pretrained import (
    SPEECH_EMBEDDING_DIM,
    extractor_for,
    speech_windows,
    waveform_input,
)
from app.multimodal.service import MultimodalService
from app.multimodal.specs import SpeechEmbeddingPreprocessing
from app.runtime.cache import ExportCache
from app.runtime.types import RuntimeRequest


def test_image_extractor_gives_pooled_features_independent_of_the_batch() -> None:
    extractor = extractor_for(TINY_PRETRAINED_IMAGE)
    assert extractor is extractor_for(TINY_PRETRAINED_IMAGE)  # built once per process
    images = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    together = extractor(images)
    assert together.shape == (3, 1280) and together.dtype == np.float32
    alone = np.concatenate([extractor(images[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert not np.allclose(together[0], together[1])  # different images, different features
    with pytest.raises(ValueError):
        extractor(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_image_extractor_on_an_exported_runtime_matches_torch(runtime: str, tmp_path: Path) -> None:
    """The extractor is a tower of the runtime layer: exported once, parity-checked, numpy in and out."""
    reference = extractor_for(TINY_PRETRAINED_IMAGE)
    request = RuntimeRequest(runtime=runtime, device="cpu")  # type: ignore[arg-type]
    exported = extractor_for(TINY_PRETRAINED_IMAGE, request, ExportCache(tmp_path))
    assert exported.report.runtime == runtime and exported.report.cache == "built"  # type: ignore[attr-defined]
    images = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(exported(images), reference(images), atol=1e-4, rtol=1e-4)


def test_speech_extractor_windows_and_pooling() -> None:
    assert speech_windows(20480) == 7 and speech_windows(12800) == 1  # 1.28 s and 0.8 s at 16 kHz
    with pytest.raises(ValueError):
        speech_windows(8000)
    wave = (0.3 * np.sin(np.linspace(0, 900, 20480))).astype(np.float32)[None]
    flat = extractor_for(SpeechEmbeddingPreprocessing())(wave)
    mean = extractor_for(SpeechEmbeddingPreprocessing(pooling="mean"))(wave)
    assert flat.shape == (1, 7 * SPEECH_EMBEDDING_DIM) and mean.shape == (1, SPEECH_EMBEDDING_DIM)
    np.testing.assert_allclose(flat.reshape(7, SPEECH_EMBEDDING_DIM).mean(0), mean[0], rtol=1e-5, atol=1e-5)


def test_waveform_input_is_resampled_trimmed_and_centred() -> None:
    rate = 8000
    tone = np.concatenate([np.zeros(4000), 0.5 * np.sin(np.arange(2000) / 3.0), np.zeros(4000)])
    wave = waveform_input(tone.astype(np.float32), rate, TINY_SPEECH)
    assert wave.shape == (TINY_SPEECH.num_samples,)
    loud = np.flatnonzero(np.abs(wave) > 0.05)
    centre = (loud[0] + loud[-1]) / 2
    assert abs(centre - TINY_SPEECH.num_samples / 2) < 400  # silence trimmed, the tone centred


def test_files_become_raw_inputs_and_vectors_skip_the_extractor(tmp_path: Path) -> None:
    spec = pretrained_feature_spec()
    image, audio = spec.modalities
    raw_image = file_input(png_bytes(), image)
    raw_audio = file_input(wav_bytes(seconds=0.5, rate=16000), audio)
    assert isinstance(raw_image, RawInput) and raw_image.array.shape == (1, 8, 8)
    assert isinstance(raw_audio, RawInput) and raw_audio.array.shape == (TINY_SPEECH.num_samples,)

    save_random_checkpoint(tmp_path / "m" / "pre", spec, "pre")
    service = MultimodalService.from_dirs([tmp_path / "m"])
    (info,) = service.list_models()
    assert "pretrained features" in info["modalities"][0]["accepts"][0]
    files = {"image": png_bytes(), "audio": wav_bytes(seconds=0.5, rate=16000)}
    from_files = service.predict("pre", files)
    features = {
        "image": extractor_for(image.preprocessing)(raw_image.array[None])[0].tolist(),  # type: ignore[arg-type]
        "audio": extractor_for(audio.preprocessing)(raw_audio.array[None])[0].tolist(),  # type: ignore[arg-type]
    }
    from_vectors = service.predict("pre", features)
    assert from_files["scores"]["msp"] == pytest.approx(from_vectors["scores"]["msp"], abs=1e-5)
    with pytest.raises(InvalidInput) as err:
        service.predict("pre", {"image": [0.0] * 64, "audio": files["audio"]})  # the raw size, not 1280
    assert err.value.code == "invalid_modality_input"


def test_batched_predictions_mix_files_and_vectors(tmp_path: Path) -> None:
    spec = pretrained_feature_spec()
    save_random_checkpoint(tmp_path / "m" / "pre", spec, "pre")
    service = MultimodalService.from_dirs([tmp_path / "m"])
    service.configure_batching(max_batch_size=8, max_wait_ms=50.0, max_queue_size=16, request_timeout_s=30.0)
    buffer = io.BytesIO()
    t = np.arange(12000) / 16000
    sf.write(buffer, (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format="WAV")
    requests = [{"image": png_bytes(value=v), "audio": buffer.getvalue()} for v in (30, 120, 250)] + [
        {"image": [0.5] * 1280, "audio": [0.1] * 96}
    ]

    async def run() -> list[dict]:
        try:
            return await asyncio.gather(*(service.predict_batched("pre", r) for r in requests))
        finally:
            await service.stop()

    batched = asyncio.run(run())
    single = [MultimodalService.from_dirs([tmp_path / "m"]).predict("pre", r) for r in requests]
    for got, want in zip(batched, single, strict=True):
        assert got["scores"]["msp"] == pytest.approx(want["scores"]["msp"], abs=1e-5)


def test_checkpoint_whose_extractor_disagrees_is_skipped(tmp_path: Path) -> None:
    spec = pretrained_feature_spec()
    spec.modalities[1].input_shape = [97]  # speech_embedding of 0.8 s gives 96 features
    save_random_checkpoint(tmp_path / "m" / "bad", spec, "bad")
    assert MultimodalService.from_dirs([tmp_path / "m"]).names == []
