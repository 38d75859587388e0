"""The tiny random-weight open_clip model used across tests and subprocess servers."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import yaml

TINY_ARCH = "trustserve-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TINY_PRESET = "tiny-clip"
TINY_TWO_SPACES_PRESET = "tiny-clip-two-spaces"  # + an independent image space (a second random tower)


def register_tiny_arch(folder: Path) -> Path:
    """Write the tiny architecture config and register it with open_clip (as a user config file is)."""
    config = folder / f"{TINY_ARCH}.json"
    if not config.exists():
        config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    return config


def write_tiny_models_dir(root: Path) -> Path:
    """A model repository holding the tiny preset (and the arch config beside it)."""
    root.mkdir(parents=True, exist_ok=True)
    register_tiny_arch(root)
    preset = {
        "name": TINY_PRESET,
        "description": "tiny random-weight open_clip ViT for tests",
        "backend": "open_clip",
        "args": {"architecture": TINY_ARCH, "pretrained": None},
        "templates": ["a photo of a {}."],
        "aux_encoder": {"kind": "vlm"},
        "offline": True,
    }
    (root / f"{TINY_PRESET}.yaml").write_text(yaml.safe_dump(preset))
    two_spaces = {
        **preset,
        "name": TINY_TWO_SPACES_PRESET,
        "description": "the tiny model with a second tiny open_clip image tower as its independent space",
        "extra_image_spaces": {"tiny2": {"kind": "open_clip", "args": {"architecture": TINY_ARCH}}},
        "trust": {"alpha": 2.0, "selection": "auto"},
    }
    (root / f"{TINY_TWO_SPACES_PRESET}.yaml").write_text(yaml.safe_dump(two_spaces))
    return root
