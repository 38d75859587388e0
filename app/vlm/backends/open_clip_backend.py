"""OpenCLIP backend: any open_clip architecture, with weights from a tag, the Hub, a local file, or none.

Zero-shot logits follow CLIP (Radford et al., 2021): ``logit_scale * cos(image, text)``; open_clip's
SigLIP-style checkpoints (Zhai et al., 2023) also carry a ``logit_bias`` that is added to every logit.

Towers: the image tower is ``encode_image(normalize=False)`` (its raw output is also TrustVLM's ``vlm``
image space), the text tower ``encode_text(normalize=False)``. Tokenizer (open_clip's BPE as a
``tokenizer.json``), preprocessing and the logit scale/bias are exported once as assets, so serving needs
neither open_clip nor torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from app.runtime.towers import RuntimeContext
from app.vlm.base import (
    BackendCapabilities,
    register_backend,
)
from app.vlm.dual_encoder import DualEncoderBackend
from app.vlm.preprocessing import ImagePreprocessor
from app.vlm.tokenization import PROBE_TEXTS, ClipBpeTokenizer
from app.vlm.towers import image_tower_source, text_tower_source, weights_identity

log = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
ASSETS_FILE = "open_clip.json"
TOKENIZER_FILE = "tokenizer.json"
# seed for ``pretrained: null``: random weights are the same in every process, so exports stay valid
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class OpenClipSource:
    """What ``open_clip.create_model`` gets: a model name (maybe with a schema) and a tag or file."""

    model_name: str
    pretrained: str | None

    @property
    def has_schema(self) -> bool:
        """True for ``hf-hub:`` / ``local-dir:`` names, which carry their own config and weights."""
        return self.model_name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))

    def describe(self) -> str:
        """Human-readable: ``ViT-B-32/laion2b_s34b_b79k``, ``ViT-B-32/random``, ``hf-hub:org/repo``."""
        if self.has_schema:
            return self.model_name
        return f"{self.model_name}/{self.pretrained or 'random'}"


def resolve_open_clip_source(architecture: str, pretrained: str | None) -> OpenClipSource:
    """Map our ``pretrained`` argument onto open_clip's loading conventions (no torch needed).

    - ``None``: random weights for ``architecture`` (no download; seeded, so reproducible).
    - ``"hf-hub:org/repo"``: config and weights from the Hugging Face Hub (``architecture`` is ignored).
    - a directory: an open_clip model folder (``open_clip_config.json`` + checkpoint), loaded as
      ``local-dir:``.
    - a file path: a checkpoint for ``architecture`` (safetensors preferred; torch files load with
      ``weights_only=True``).
    - otherwise: a pretrained tag of ``architecture`` such as ``laion2b_s34b_b79k`` or ``openai``.
    """
    if pretrained is None:
        return OpenClipSource(architecture, None)
    if pretrained.startswith(HF_HUB_PREFIX):
        return OpenClipSource(pretrained, None)
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return OpenClipSource(f"{LOCAL_DIR_PREFIX}{path}", None)
    if path.is_file():
        return OpenClipSource(architecture, str(path))
    if "/" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"open_clip checkpoint {pretrained!r} does not exist")
    return OpenClipSource(architecture, pretrained)


def open_clip_identity(context: RuntimeContext, source: OpenClipSource) -> dict[str, Any]:
    """Weights identity: the checksum of a local file or folder; the name of a published tag / Hub repo
    (immutable releases); the seeded random initialisation of this open_clip version."""
    if source.model_name.startswith(LOCAL_DIR_PREFIX):
        weights = weights_identity(context.cache, source.model_name.removeprefix(LOCAL_DIR_PREFIX))
    elif source.pretrained and Path(source.pretrained).is_file():
        weights = weights_identity(context.cache, source.pretrained)
    elif source.pretrained or source.has_schema:
        weights = f"published:{source.describe()}"
    else:
        weights = f"random-init:seed={RANDOM_INIT_SEED}:open_clip={version('open_clip_torch')}"
    return {"backend": "open_clip", "model": source.model_name, "weights": weights}


@dataclass
class OpenClipComponents:
    """A loaded open_clip model (fp32, CPU, eval) with its tokenizer."""

    source: OpenClipSource
    model: Any
    tokenizer: Any


def load_open_clip(
    architecture: str, pretrained: str | None, *, cache_dir: str | None = None
) -> OpenClipComponents:
    """Build an open_clip model in eval mode (fp32 on the CPU; the runtime layer moves it)."""
    import open_clip
    import torch

    source = resolve_open_clip_source(architecture, pretrained)
    if not source.has_schema and source.pretrained and not Path(source.pretrained).is_file():
        known_tags = open_clip.list_pretrained_tags_by_model(architecture)
        if architecture in open_clip.list_models() and source.pretrained not in known_tags:
            raise ValueError(
                f"unknown pretrained tag {source.pretrained!r} for open_clip architecture {architecture!r}; "
                f"known tags: {known_tags}"
            )
    if source.pretrained is None and not source.has_schema:
        log.warning(
            "open_clip %s has RANDOM weights (pretrained: null): its predictions mean nothing", architecture
        )
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(source.model_name, pretrained=source.pretrained, cache_dir=cache_dir)
    tokenizer = open_clip.get_tokenizer(source.model_name, cache_dir=cache_dir)
    return OpenClipComponents(source, model.eval(), tokenizer)


def open_clip_preprocessor(model: Any) -> ImagePreprocessor:
    """The checkpoint's eval transform (``model.visual.preprocess_cfg``) as an :class:`ImagePreprocessor`."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    size = size[0] if isinstance(size, tuple | list) else size
    if cfg.get("resize_mode", "shortest") not in ("shortest", "squash"):
        raise ValueError(f"open_clip resize_mode {cfg['resize_mode']!r} is not supported")
    squash = cfg.get("resize_mode") == "squash"
    return ImagePreprocessor(
        resize=int(size),
        resize_mode="squash" if squash else "shortest",
        crop=None if squash else int(size),
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )


def write_open_clip_assets(components: OpenClipComponents, folder: Path) -> dict[str, Any]:
    """Preprocessing, scalars and a ``tokenizer.json`` equivalent to open_clip's BPE tokenizer (checked on
    probe texts; a tokenizer that cannot be reproduced is refused with a clear message)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizerFast

    model, tokenizer = components.model, components.tokenizer
    bias = getattr(model, "logit_bias", None)
    assets = {
        "preprocess": open_clip_preprocessor(model).model_dump(),
        "context_length": int(tokenizer.context_length),
        "tokenizer": "clip-bpe" if isinstance(tokenizer, SimpleTokenizer) else "open_clip",
        "logit_scale": float(model.logit_scale.detach().float().exp().item()),
        "logit_bias": 0.0 if bias is None else float(bias.detach().float().item()),
    }
    if assets["tokenizer"] == "open_clip":  # e.g. an HF tokenizer: served by open_clip (imports torch)
        (folder / ASSETS_FILE).write_text(json.dumps(assets))
        return {"source": components.source.describe()}
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps(tokenizer.encoder))
    ranked = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    merges.write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in ranked) + "\n")
    special = {"bos_token": "<start_of_text>", "eos_token": "<end_of_text>", "pad_token": "<end_of_text>"}
    fast = CLIPTokenizerFast(str(vocab), str(merges), unk_token="<end_of_text>", **special)
    fast.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    vocab.unlink()
    merges.unlink()
    ours = ClipBpeTokenizer(
        folder / TOKENIZER_FILE,
        context_length=tokenizer.context_length,
        sot_id=tokenizer.sot_token_id,
        eot_id=tokenizer.eot_token_id,
    )
    if not np.array_equal(ours(PROBE_TEXTS)["text"], tokenizer(list(PROBE_TEXTS)).numpy()):
        raise ValueError(f"{components.source.describe()}: exported tokenizer differs from open_clip's")
    assets |= {"sot_id": tokenizer.sot_token_id, "eot_id": tokenizer.eot_token_id}
    (folder / ASSETS_FILE).write_text(json.dumps(assets))
    return {"source": components.source.describe()}


def image_tower_module(model: Any) -> Any:
    from app.runtime.torch_executor import CallableTower

    return CallableTower(model, lambda m, pixels: m.encode_image(pixels, normalize=False))


def text_tower_module(model: Any) -> Any:
    from app.runtime.torch_executor import CallableTower

    return CallableTower(model, lambda m, text: m.encode_text(text, normalize=False))


class OpenClipBackend(DualEncoderBackend):
    """The :class:`~app.vlm.dual_encoder.DualEncoderBackend` over an open_clip model's two towers."""


def open_clip_image_source(
    context: RuntimeContext,
    source: OpenClipSource,
    loaded: Callable[[], OpenClipComponents],
    preprocessor: ImagePreprocessor,
    tower: str = "image",
):
    """The image tower of an open_clip model (also used by the ``open_clip`` auxiliary encoder)."""
    return image_tower_source(
        model=context.model,
        tower=tower,
        identity=open_clip_identity(context, source),
        preprocessor=preprocessor,
        build_module=lambda: image_tower_module(loaded().model),
        outputs=("features",),
        transformer=True,
    )


def open_clip_assets(
    context: RuntimeContext, source: OpenClipSource, loaded: Callable[[], OpenClipComponents]
) -> tuple[dict[str, Any], Path]:
    """The exported assets (parsed ``open_clip.json``) and the folder holding ``tokenizer.json``."""
    entry = context.assets(
        "open_clip", open_clip_identity(context, source), lambda d: write_open_clip_assets(loaded(), d)
    )
    return json.loads(entry.file(ASSETS_FILE).read_text()), entry.path


class OpenClipNativeTokenizer:
    """open_clip's own tokenizer for models whose tokenizer has no exported form yet (e.g. HF tokenizers
    of SigLIP-style open_clip models). Imports open_clip, hence torch: such a model is not torch-free."""

    input_names = ("text",)

    def __init__(self, model_name: str, cache_dir: str | None) -> None:
        import open_clip

        self._tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {"text": self._tokenizer(list(texts)).numpy().astype(np.int64)}


class LazyLoad:
    """Loads an open_clip model on first call only (never on a warm start of an exported runtime)."""

    def __init__(self, load: Callable[[], OpenClipComponents]) -> None:
        self._load = load
        self._value: OpenClipComponents | None = None

    def __call__(self) -> OpenClipComponents:
        if self._value is None:
            self._value = self._load()
        return self._value


@register_backend("open_clip", BackendCapabilities(logit_bias=True))
def create_open_clip_backend(
    context: RuntimeContext,
    architecture: str = "ViT-B-32",
    pretrained: str | None = None,
    cache_dir: str | None = None,
    text_batch_size: int = 256,
) -> OpenClipBackend:
    """Factory for presets with ``backend: open_clip``; ``pretrained``: see
    :func:`resolve_open_clip_source`."""
    source = resolve_open_clip_source(architecture, pretrained)
    loaded = LazyLoad(lambda: load_open_clip(architecture, pretrained, cache_dir=cache_dir))
    assets, folder = open_clip_assets(context, source, loaded)
    preprocessor = ImagePreprocessor(**assets["preprocess"])
    tokenizer: Callable[[Sequence[str]], dict[str, np.ndarray]]
    if assets.get("tokenizer", "clip-bpe") == "clip-bpe":
        tokenizer = ClipBpeTokenizer(
            folder / TOKENIZER_FILE,
            context_length=assets["context_length"],
            sot_id=assets["sot_id"],
            eot_id=assets["eot_id"],
        )
    else:
        tokenizer = OpenClipNativeTokenizer(source.model_name, cache_dir)
    text = text_tower_source(
        model=context.model,
        identity=open_clip_identity(context, source),
        tokenizer=tokenizer,
        build_module=lambda: text_tower_module(loaded().model),
        outputs=("embeddings",),
        sequence_length=assets["context_length"],
    )
    image_executor = context.tower(open_clip_image_source(context, source, loaded, preprocessor))
    text_executor = context.tower(text)
    return OpenClipBackend(
        image_executor,
        text_executor,
        preprocessor,
        tokenizer,
        name=f"open_clip:{source.describe()}",
        logit_scale=assets["logit_scale"],
        logit_bias=assets["logit_bias"],
        text_batch_size=text_batch_size,
        towers=context.reports,
    )
