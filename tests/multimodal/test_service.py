"""MultimodalService: discovery, descriptions, prediction and domain errors (no HTTP)."""

from pathlib import Path

import pytest
from mm_helpers import TINY_AUDIO, image_audio_spec, png_bytes, save_random_checkpoint, wav_bytes

from app.errors import InvalidInput, NotFound, TrustserveError
from app.multimodal.service import MultimodalService, find_checkpoint_dirs


def _service(tmp_path: Path, threshold: float | None = 0.5) -> MultimodalService:
    save_random_checkpoint(
        tmp_path / "models" / "group" / "av", image_audio_spec(), "av", threshold=threshold
    )
    return MultimodalService.from_dirs([tmp_path / "models", tmp_path / "missing", None])


def test_discovery_and_duplicates(tmp_path: Path) -> None:
    save_random_checkpoint(tmp_path / "a" / "one", image_audio_spec(), "same")
    save_random_checkpoint(tmp_path / "a" / "two", image_audio_spec(), "same")
    (tmp_path / "a" / "three").mkdir()
    (tmp_path / "a" / "three" / "config.json").write_text("{}")
    (tmp_path / "a" / "three" / "model.safetensors").write_bytes(b"")
    assert [p.name for p in find_checkpoint_dirs(tmp_path / "a")] == ["one", "three", "two"]
    assert find_checkpoint_dirs(tmp_path / "a" / "one") == [tmp_path / "a" / "one"]
    service = MultimodalService.from_dirs([tmp_path / "a"])
    assert service.names == ["same"]  # the broken one and the duplicate name are skipped


def test_list_models_describes_inputs(tmp_path: Path) -> None:
    (info,) = _service(tmp_path).list_models()
    assert info["name"] == "av" and info["class_names"] == ["a", "b", "c"]
    image, audio = info["modalities"]
    assert image["input"] == "image" and image["accepts"][0].startswith("image file")
    assert audio["input_shape"] == [TINY_AUDIO.n_mels, TINY_AUDIO.num_frames]
    assert info["calibration"]["calibrated"] and info["calibration"]["threshold"] == 0.5


def test_predict_from_files_and_decision_follows_threshold(tmp_path: Path) -> None:
    inputs = {"image": png_bytes(), "audio": wav_bytes()}
    accepting = _service(tmp_path / "x", threshold=0.0).predict("av", inputs, top_k=10)
    assert len(accepting["top_k"]) == 3  # clipped to the number of classes
    assert accepting["decision"]["accept"] is True and accepting["decision"]["calibrated"]
    rejecting = _service(tmp_path / "y", threshold=1.01).predict("av", inputs, top_k=1)
    assert rejecting["decision"]["accept"] is False
    assert rejecting["confidence"] == pytest.approx(rejecting["prediction"]["probability"])
    uncalibrated = _service(tmp_path / "z", threshold=None).predict("av", inputs)
    assert uncalibrated["decision"]["accept"] is None and not uncalibrated["decision"]["calibrated"]


def test_errors_are_api_errors(tmp_path: Path) -> None:
    service = _service(tmp_path)
    good = {"image": png_bytes(), "audio": wav_bytes()}
    cases = [
        ("nope", good, NotFound),
        ("av", {"image": png_bytes()}, InvalidInput),
        ("av", {**good, "depth": [1.0]}, InvalidInput),
        ("av", {"image": [0.0] * 63, "audio": wav_bytes()}, InvalidInput),
        ("av", {"image": png_bytes(), "audio": b"garbage"}, InvalidInput),
    ]
    for model, inputs, kind in cases:
        with pytest.raises(TrustserveError) as info:
            service.predict(model, inputs)
        assert type(info.value) is kind
    with pytest.raises(InvalidInput):
        service.predict("av", good, top_k=0)
