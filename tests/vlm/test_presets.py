"""Every preset in models/ parses, names a registered backend and image space with arguments that the
factory accepts, and every offline preset actually builds and encodes."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from app.vlm import registry  # noqa: F401  (fills the registries)
from app.vlm.aux_base import AUX_ENCODERS, SHARED_TOWER
from app.vlm.backends.open_clip_backend import resolve_open_clip_source
from app.vlm.base import BACKENDS, create_backend
from app.vlm.presets import DEFAULT_MODELS_DIR, ModelPreset, list_presets, load_preset_file
from tests.support.runtime import make_context

PRESET_FILES = sorted(
    path
    for path in DEFAULT_MODELS_DIR.glob("*.yaml")
    if "backend" in (yaml.safe_load(path.read_text()) or {})
)
PRESETS = list_presets()
OFFLINE = sorted(name for name, preset in PRESETS.items() if preset.offline)


def test_the_model_repository_has_the_expected_presets() -> None:
    assert {"clip-vit-b-32", "clip-vit-b-16", "siglip-base", "random-vit-b-32"} <= set(PRESETS)
    assert "random-vit-b-32" in OFFLINE
    assert PRESETS["random-vit-b-32"].args == {"architecture": "ViT-B-32", "pretrained": None}


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: p.stem)
def test_preset_file_is_valid(path: Path) -> None:
    preset = load_preset_file(path)
    assert preset.name == path.stem
    assert preset.backend in BACKENDS, f"{path.name}: backend {preset.backend!r} is not registered"
    signature = inspect.signature(BACKENDS[preset.backend].factory)
    signature.bind(None, **preset.args)  # raises on a bad arg
    kind = preset.aux_encoder.kind
    assert kind == SHARED_TOWER or kind in AUX_ENCODERS, f"{path.name}: unknown image space {kind!r}"
    if kind != SHARED_TOWER:
        inspect.signature(AUX_ENCODERS[kind]).bind(None, **preset.aux_encoder.args)


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.backend == "open_clip"))
def test_open_clip_presets_name_a_known_architecture_and_tag(name: str) -> None:
    args = PRESETS[name].args
    resolve_open_clip_source(args["architecture"], args.get("pretrained"))  # raises on an unknown tag


def test_a_bad_template_or_field_is_rejected() -> None:
    with pytest.raises(ValueError, match="slot"):
        ModelPreset(name="x", backend="open_clip", templates=["a photo"])
    with pytest.raises(ValueError, match="extra"):
        ModelPreset(name="x", backend="open_clip", architecture="ViT-B-32")


@pytest.mark.slow
@pytest.mark.parametrize("name", OFFLINE)
def test_offline_preset_builds_and_encodes(name: str) -> None:
    preset = PRESETS[name]
    context = make_context(Path(os.environ["TRUSTSERVE_EXPORT_CACHE_DIR"]), "auto", model=name)
    backend = create_backend(preset.backend, context, **preset.args)
    images = [Image.new("RGB", (64, 48), colour) for colour in ("red", "navy")]
    encoding = backend.encode_images(np.stack([backend.preprocess(image) for image in images]))
    assert encoding.embeddings.shape == (2, backend.embedding_dim)
    texts = backend.encode_texts([template.format("cat") for template in preset.templates])
    assert texts.shape == (len(preset.templates), backend.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=-1), 1.0, atol=1e-5)


def test_a_preset_may_pin_its_runtime_and_explicit_settings_win(tmp_path: Path) -> None:
    from app.config import Settings
    from app.vlm.loading import runtime_request

    preset = ModelPreset(name="x", backend="open_clip", runtime="openvino", precision="int8")
    assert (runtime_request(Settings(), preset).runtime, runtime_request(Settings(), preset).precision) == (
        "openvino",
        "int8",
    )
    explicit = runtime_request(Settings(runtime="torch", precision="fp32"), preset)
    assert (explicit.runtime, explicit.precision) == ("torch", "fp32")
    assert runtime_request(Settings(), ModelPreset(name="y", backend="open_clip")).runtime == "auto"
    with pytest.raises(ValueError):
        ModelPreset(name="x", backend="open_clip", runtime="tensorflow")
