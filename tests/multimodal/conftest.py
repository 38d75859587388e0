"""Fixtures of the multimodal tests (helpers live in mm_helpers.py)."""

from pathlib import Path

import pytest
from mm_helpers import make_feature_dataset, tiny_feature_spec

from app.multimodal.specs import FusionSpec


@pytest.fixture
def tiny_spec() -> FusionSpec:
    return tiny_feature_spec()


@pytest.fixture
def feature_dataset(tmp_path: Path) -> Path:
    return make_feature_dataset(tmp_path / "tiny")
