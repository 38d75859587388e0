"""create_aux_encoder: 'vlm' means no second model; other kinds come from the registry."""

from __future__ import annotations

import pytest
import torch

from app.vlm.aux.factory import create_aux_encoder
from app.vlm.aux.timm_encoder import TimmEncoder
from app.vlm.presets import AuxEncoderSpec

CPU = torch.device("cpu")


def test_shared_tower_builds_nothing() -> None:
    assert create_aux_encoder(AuxEncoderSpec(kind="vlm"), CPU, torch.float32) is None


def test_registered_kind_gets_its_args() -> None:
    spec = AuxEncoderSpec(kind="timm", args={"model_name": "test_vit", "pretrained": False})
    encoder = create_aux_encoder(spec, CPU, torch.float32)
    assert isinstance(encoder, TimmEncoder)
    assert encoder.name == "timm:test_vit/random" and encoder.dim == 64


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"'mocov2'.*'dinov2'.*'open_clip'.*'timm'.*'vlm'"):
        create_aux_encoder(AuxEncoderSpec(kind="mocov2"), CPU, torch.float32)
