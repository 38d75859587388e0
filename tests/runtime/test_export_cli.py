"""``trustserve models export PRESET`` builds the export cache ahead of time; a later load is a cache hit."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.vlm.loading import load_image_space_tower, load_models
from app.vlm.presets import get_preset
from tests.support.tiny_model import TINY_PRESET, TINY_TWO_SPACES_PRESET


def test_export_builds_the_cache_and_the_server_load_hits_it(tiny_models_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["models", "export", TINY_PRESET, "--runtime", "openvino", "--cache-dir", str(cache)]
    result = CliRunner().invoke(cli, [*args, "--models-dir", str(tiny_models_dir)])
    assert result.exit_code == 0, result.output
    assert "image" in result.output and "openvino" in result.output and "built" in result.output
    settings = Settings(
        model=TINY_PRESET,
        models_dir=tiny_models_dir,
        export_cache_dir=cache,
        runtime="openvino",
        device="cpu",
    )
    loaded = load_models(get_preset(TINY_PRESET, tiny_models_dir), settings)
    assert {t: r.cache for t, r in loaded.towers.items()} == {"image": "hit", "text": "hit"}


def test_export_refuses_what_cannot_run(tiny_models_dir: Path, tmp_path: Path) -> None:
    args = ["models", "export", TINY_PRESET, "--runtime", "onnxruntime", "--precision", "bf16"]
    result = CliRunner().invoke(
        cli, [*args, "--cache-dir", str(tmp_path), "--models-dir", str(tiny_models_dir)]
    )
    assert result.exit_code == 2
    assert "cannot run precision 'bf16'" in result.output


def test_export_includes_the_extra_image_spaces(tiny_models_dir: Path, tmp_path: Path) -> None:
    """A label set loads its independent space on first use: the ahead-of-time export must hold it too
    (the slim image has no torch to export it later)."""
    cache = tmp_path / "cache"
    args = ["models", "export", TINY_TWO_SPACES_PRESET, "--runtime", "onnxruntime", "--cache-dir", str(cache)]
    result = CliRunner().invoke(cli, [*args, "--models-dir", str(tiny_models_dir)])
    assert result.exit_code == 0, result.output
    assert "image-space:tiny2" in result.output
    settings = Settings(
        model=TINY_TWO_SPACES_PRESET,
        models_dir=tiny_models_dir,
        export_cache_dir=cache,
        runtime="onnxruntime",
        device="cpu",
    )
    preset = get_preset(TINY_TWO_SPACES_PRESET, tiny_models_dir)
    _, report = load_image_space_tower(preset, "tiny2", settings)
    assert (report.runtime, report.cache) == ("onnxruntime", "hit")
