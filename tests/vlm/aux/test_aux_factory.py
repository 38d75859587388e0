"""create_aux_encoder: 'vlm' means no second model; other kinds come from the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.vlm.aux.factory import create_aux_encoder
from app.vlm.aux_base import TowerImageEncoder
from app.vlm.presets import AuxEncoderSpec
from tests.support.runtime import make_context


def test_shared_tower_builds_nothing(tmp_path: Path) -> None:
    assert create_aux_encoder(AuxEncoderSpec(kind="vlm"), make_context(tmp_path)) is None


def test_registered_kind_gets_its_args(tmp_path: Path) -> None:
    spec = AuxEncoderSpec(kind="timm", args={"model_name": "test_vit", "pretrained": False})
    encoder = create_aux_encoder(spec, make_context(tmp_path))
    assert isinstance(encoder, TowerImageEncoder)
    assert encoder.name == "timm:test_vit/random" and encoder.dim == 64


def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"'mocov2'.*'dinov2'.*'open_clip'.*'timm'.*'vlm'"):
        create_aux_encoder(AuxEncoderSpec(kind="mocov2"), make_context(tmp_path))
