"""transformers backend: CLIP (Radford et al., 2021) and SigLIP (Zhai et al., 2023) dual encoders.

The model class is chosen from ``config.model_type`` of a Hub id or a local ``save_pretrained`` folder;
the tokenizer and image processor come from the same place and are exported once (``tokenizer.json`` and
the processor's resize/crop/normalise settings), so serving needs neither transformers' models nor torch.

Logits are ``logit_scale * cos(image, text) + logit_bias``. CLIP has no bias (``logit_bias = 0``). SigLIP
was trained with a per-pair sigmoid loss, so its calibrated probability that one label matches is
``sigmoid(logit)``; for zero-shot classification *among* labels the service still takes the softmax of the
logits (the bias is then a constant shift and changes nothing). The TrustVLM reference does the same for
SigLIP, with a fixed scale of 100 (the ``siglip-base`` preset sets ``logit_scale: 100``).
"""

from __future__ import annotations

import json
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
from app.vlm.tokenization import PROBE_TEXTS, HFTokenizer, TransformersTokenizer
from app.vlm.towers import image_tower_source, text_tower_source, weights_identity

MODEL_TYPES = ("clip", "siglip")
ASSETS_FILE = "transformers.json"
TOKENIZER_FILE = "tokenizer.json"
SLOW_TOKENIZER_DIR = "tokenizer"
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def processor_preprocessor(config: dict[str, Any]) -> ImagePreprocessor:
    """A transformers image processor's settings (``to_dict()``) as an :class:`ImagePreprocessor`."""
    size = config.get("size") or {}
    if "shortest_edge" in size:
        resize, mode = int(size["shortest_edge"]), "shortest"
    elif size.get("height") == size.get("width") and size.get("height"):
        resize, mode = int(size["height"]), "squash"
    else:
        raise ValueError(f"unsupported image processor size {size!r}")
    crop = config.get("crop_size") or {}
    rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    if abs(rescale - 1 / 255) > 1e-9:
        raise ValueError(f"unsupported image processor rescale factor {rescale}")
    normalize = config.get("do_normalize", True)
    return ImagePreprocessor(
        resize=resize,
        resize_mode=mode,
        crop=int(crop["height"]) if config.get("do_center_crop") and crop else None,
        interpolation=_RESAMPLE.get(int(config.get("resample", 3)), "bicubic"),
        mean=tuple(config["image_mean"]) if normalize else (0.0, 0.0, 0.0),
        std=tuple(config["image_std"]) if normalize else (1.0, 1.0, 1.0),
    )


def _hub_kwargs(revision: str | None, cache_dir: str | None, local_files_only: bool) -> dict[str, Any]:
    return {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}


def load_dual_encoder(model_id: str, hub: dict[str, Any]) -> Any:
    """The CLIPModel / SiglipModel in eval mode (fp32, CPU)."""
    from transformers import AutoConfig, CLIPModel, SiglipModel

    config = AutoConfig.from_pretrained(model_id, **hub)
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if config.model_type not in classes:
        raise ValueError(
            f"{model_id!r} is a {config.model_type!r} model; "
            f"the transformers backend serves {sorted(classes)}"
        )
    return classes[config.model_type].from_pretrained(model_id, **hub).eval()


def write_transformers_assets(model_id: str, hub: dict[str, Any], model: Any, folder: Path) -> dict[str, Any]:
    """Tokenizer (checked against transformers' own on probe texts), processor settings and scalars."""
    from transformers import AutoImageProcessor, AutoTokenizer

    model_type = model.config.model_type
    tokenizer = AutoTokenizer.from_pretrained(model_id, **hub)
    if tokenizer.is_fast:
        tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    else:  # e.g. SigLIP's SentencePiece: served by transformers (not torch-free)
        tokenizer.save_pretrained(folder / SLOW_TOKENIZER_DIR)
    # SigLIP pools the last token, so it needs the fixed-length padding it was trained with (and no mask).
    padding = "max_length" if model_type == "siglip" else "longest"
    max_length = int(model.config.text_config.max_position_embeddings)
    inputs = ("input_ids",) if model_type == "siglip" else ("input_ids", "attention_mask")
    settings = {
        "max_length": max_length,
        "padding": padding,
        "pad_id": int(tokenizer.pad_token_id),
        "pad_token": str(tokenizer.pad_token),
        "input_names": list(inputs),
        "fast": bool(tokenizer.is_fast),
    }
    ours = make_tokenizer(folder, {**settings, "fast": tokenizer.is_fast})(list(PROBE_TEXTS))
    theirs = tokenizer(list(PROBE_TEXTS), padding=padding, truncation=True, max_length=max_length)
    if not np.array_equal(ours["input_ids"], np.array(theirs["input_ids"])):
        raise ValueError(f"{model_id!r}: the exported tokenizer differs from transformers' on probe texts")
    processor = AutoImageProcessor.from_pretrained(model_id, **hub)
    bias = getattr(model, "logit_bias", None)
    assets = {
        "model_type": model_type,
        "tokenizer": settings,
        "preprocess": processor_preprocessor(processor.to_dict()).model_dump(),
        "logit_scale": float(model.logit_scale.detach().float().exp().item()),
        "logit_bias": 0.0 if bias is None else float(bias.detach().float().item()),
    }
    (folder / ASSETS_FILE).write_text(json.dumps(assets))
    return {"model_id": model_id}


def make_tokenizer(folder: Path, settings: dict[str, Any]) -> HFTokenizer | TransformersTokenizer:
    """The exported tokenizer: ``tokenizers`` (torch-free) when the model has a fast one."""
    kwargs = {k: v for k, v in settings.items() if k != "fast"}
    kwargs["input_names"] = tuple(settings["input_names"])
    if settings["fast"]:
        return HFTokenizer(folder / TOKENIZER_FILE, **kwargs)
    return TransformersTokenizer(folder / SLOW_TOKENIZER_DIR, **kwargs)


def image_tower_module(model: Any) -> Any:
    from app.runtime.torch_executor import CallableTower

    return CallableTower(model, lambda m, pixels: m.get_image_features(pixel_values=pixels).pooler_output)


def text_tower_module(model: Any, with_mask: bool) -> Any:
    from app.runtime.torch_executor import CallableTower

    if with_mask:
        return CallableTower(
            model,
            lambda m, ids, mask: m.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
        )
    # SigLIP was trained without a text attention mask (padding tokens are attended); match that.
    return CallableTower(model, lambda m, ids: m.get_text_features(input_ids=ids).pooler_output)


class TransformersDualEncoderBackend(DualEncoderBackend):
    """The :class:`~app.vlm.dual_encoder.DualEncoderBackend` over a transformers ``CLIPModel`` or
    ``SiglipModel`` (``features``: CLIP's image embeddings after the visual projection, SigLIP's
    attention-pooling head output, both before L2 normalisation)."""


@register_backend("transformers", BackendCapabilities(logit_bias=True))
def create_transformers_backend(
    context: RuntimeContext,
    model_id: str,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    text_batch_size: int = 256,
) -> TransformersDualEncoderBackend:
    """Factory for presets with ``backend: transformers``; ``model_id`` is a Hub id or a local folder."""
    hub = _hub_kwargs(revision, cache_dir, local_files_only)
    local = Path(model_id).expanduser()
    weights = (
        weights_identity(context.cache, local)
        if local.is_dir()
        else f"published:{model_id}@{revision or 'main'}"
    )
    identity = {"backend": "transformers", "weights": weights}
    model: list[Any] = []

    def loaded() -> Any:
        if not model:
            model.append(load_dual_encoder(model_id, hub))
        return model[0]

    entry = context.assets(
        "transformers", identity, lambda folder: write_transformers_assets(model_id, hub, loaded(), folder)
    )
    assets = json.loads(entry.file(ASSETS_FILE).read_text())
    settings = assets["tokenizer"]
    tokenizer = make_tokenizer(entry.path, settings)
    preprocessor = ImagePreprocessor(**assets["preprocess"])
    image = image_tower_source(
        model=context.model,
        tower="image",
        identity=identity,
        preprocessor=preprocessor,
        build_module=lambda: image_tower_module(loaded()),
        outputs=("features",),
        transformer=True,
    )
    text = text_tower_source(
        model=context.model,
        identity=identity,
        tokenizer=tokenizer,
        build_module=lambda: text_tower_module(loaded(), "attention_mask" in settings["input_names"]),
        outputs=("embeddings",),
        sequence_length=settings["max_length"] if settings["padding"] == "max_length" else None,
    )
    image_executor = context.tower(image)
    text_executor = context.tower(text)
    return TransformersDualEncoderBackend(
        image_executor,
        text_executor,
        preprocessor,
        tokenizer,
        name=f"transformers:{model_id}",
        model_type=assets["model_type"],
        logit_scale=assets["logit_scale"],
        logit_bias=assets["logit_bias"],
        text_batch_size=text_batch_size,
        towers=context.reports,
    )
