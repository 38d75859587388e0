"""Checkpoints: safetensors + JSON round trip, strict validation, no pickles."""

import json
from pathlib import Path

import pytest
import torch
from mm_helpers import image_audio_spec, save_random_checkpoint

from app.multimodal.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    is_checkpoint_dir,
    load_checkpoint,
)
from app.multimodal.model import LateFusionClassifier


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    spec = image_audio_spec()
    folder = save_random_checkpoint(tmp_path / "ckpt", spec, "demo", threshold=0.7)
    assert is_checkpoint_dir(folder)
    torch.manual_seed(0)
    original = LateFusionClassifier(spec).eval()
    loaded = load_checkpoint(folder)
    x = {"image": torch.rand(2, 1, 8, 8), "audio": torch.randn(2, *spec.modalities[1].input_shape)}
    assert torch.equal(original(x).fused_logits, loaded.model(x).fused_logits)
    assert not loaded.model.training
    assert loaded.config.calibration.threshold == 0.7 and loaded.config.calibration.calibrated
    assert loaded.config.fusion.modalities[1].preprocessing.kind == "log_mel"


def test_weights_file_is_safetensors(tmp_path: Path) -> None:
    folder = save_random_checkpoint(tmp_path / "ckpt", image_audio_spec(), "demo")
    raw = (folder / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "fused_head.weight" in header


def test_broken_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    folder = save_random_checkpoint(tmp_path / "ckpt", image_audio_spec(), "demo")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["fusion"]["modalities"][0]["embed_dim"] = 9
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_checkpoint(folder)
    config["class_names"] = ["only-one", "two"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="class names"):
        load_checkpoint(folder)
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid checkpoint config"):
        load_checkpoint(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)
