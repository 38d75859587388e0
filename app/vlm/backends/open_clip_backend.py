"""OpenCLIP backend: any open_clip architecture, with weights from a tag, the Hub, a local file, or none.

Zero-shot logits follow CLIP (Radford et al., 2021): ``logit_scale * cos(image, text)``; open_clip's
SigLIP-style checkpoints (Zhai et al., 2023) also carry a ``logit_bias`` that is added to every logit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from PIL import Image

from app.vlm.base import ImageEncoding, register_backend, to_model_input

log = logging.getLogger(__name__)

_OPEN_CLIP_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")


@dataclass(frozen=True)
class OpenClipSource:
    """What ``open_clip.create_model`` gets: a model name (maybe with a schema) and a tag or file."""

    model_name: str
    pretrained: str | None

    @property
    def has_schema(self) -> bool:
        """True for ``hf-hub:`` / ``local-dir:`` names, which carry their own config and weights."""
        return self.model_name.startswith(
            (open_clip.factory.HF_HUB_PREFIX, open_clip.factory.LOCAL_DIR_PREFIX)
        )

    def describe(self) -> str:
        """Human-readable: ``ViT-B-32/laion2b_s34b_b79k``, ``ViT-B-32/random``, ``hf-hub:org/repo``."""
        if self.has_schema:
            return self.model_name
        return f"{self.model_name}/{self.pretrained or 'random'}"


def resolve_open_clip_source(architecture: str, pretrained: str | None) -> OpenClipSource:
    """Map our ``pretrained`` argument onto open_clip's loading conventions.

    - ``None``: random weights for ``architecture`` (no download).
    - ``"hf-hub:org/repo"``: config and weights from the Hugging Face Hub (``architecture`` is ignored).
    - a directory: an open_clip model folder (``open_clip_config.json`` + checkpoint), loaded as
      ``local-dir:``.
    - a file path: a checkpoint for ``architecture`` (safetensors preferred; torch files load with
      ``weights_only=True``).
    - otherwise: a pretrained tag of ``architecture`` such as ``laion2b_s34b_b79k`` or ``openai``.
    """
    if pretrained is None:
        return OpenClipSource(architecture, None)
    if pretrained.startswith(open_clip.factory.HF_HUB_PREFIX):
        return OpenClipSource(pretrained, None)
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return OpenClipSource(f"{open_clip.factory.LOCAL_DIR_PREFIX}{path}", None)
    if path.is_file():
        return OpenClipSource(architecture, str(path))
    if "/" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"open_clip checkpoint {pretrained!r} does not exist")
    known_tags = open_clip.list_pretrained_tags_by_model(architecture)
    if architecture in open_clip.list_models() and pretrained not in known_tags:
        raise ValueError(
            f"unknown pretrained tag {pretrained!r} for open_clip architecture {architecture!r}; "
            f"known tags: {known_tags}"
        )
    return OpenClipSource(architecture, pretrained)


Tokenizer = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class OpenClipComponents:
    """A loaded open_clip model with its inference image transform."""

    source: OpenClipSource
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]


def load_open_clip(
    architecture: str,
    pretrained: str | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    cache_dir: str | None = None,
) -> OpenClipComponents:
    """Build an open_clip model in eval mode on ``device``; fp16/bf16 use open_clip's mixed precision
    (weights in low precision, LayerNorms in fp32, as in the original OpenAI release)."""
    if dtype not in _OPEN_CLIP_PRECISION:
        raise ValueError(f"unsupported dtype {dtype} for open_clip; use one of {list(_OPEN_CLIP_PRECISION)}")
    source = resolve_open_clip_source(architecture, pretrained)
    if source.pretrained is None and not source.has_schema:
        log.warning(
            "open_clip %s has RANDOM weights (pretrained: null): its predictions mean nothing", architecture
        )
    model, _, preprocess = open_clip.create_model_and_transforms(
        source.model_name,
        pretrained=source.pretrained,
        precision=_OPEN_CLIP_PRECISION[dtype],
        device=device,
        cache_dir=cache_dir,
    )
    model.eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return OpenClipComponents(source=source, model=model, preprocess=preprocess)


class OpenClipBackend:
    """A :class:`~app.vlm.base.VLMBackend` over an open_clip model.

    ``features`` in :class:`ImageEncoding` are the image tower's output before L2 normalisation
    (``encode_image(normalize=False)``), so TrustVLM's ``vlm`` image space costs no second forward.
    """

    def __init__(
        self,
        components: OpenClipComponents,
        tokenizer: Tokenizer,
        *,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
        text_batch_size: int = 256,
        compile_image_encoder: bool = False,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self._model = components.model
        self._preprocess = components.preprocess
        self._tokenizer = tokenizer
        self.text_batch_size = text_batch_size
        self._encode_image: Callable[..., torch.Tensor] = self._model.encode_image
        if compile_image_encoder:
            self._encode_image = torch.compile(self._model.encode_image)
        self.logit_scale: float = float(self._model.logit_scale.detach().float().exp().item())
        bias = getattr(self._model, "logit_bias", None)
        self.logit_bias: float = 0.0 if bias is None else float(bias.detach().float().item())
        self.embedding_dim: int = int(self._encode_text_chunk([""]).shape[1])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, H, W) float32 with the checkpoint's resize/crop/normalisation."""
        return self._preprocess(image.convert("RGB"))

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> ImageEncoding:
        """(B, 3, H, W) -> normalised embeddings and the raw (pre-normalisation) image-tower output."""
        pixels = to_model_input(pixels, self.device, self.dtype)
        raw = self._encode_image(pixels, normalize=False).float()
        embeddings = torch.nn.functional.normalize(raw, dim=-1)
        return ImageEncoding(embeddings=embeddings.cpu(), features=raw.cpu())

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, D) normalised embeddings; tokenised and encoded ``text_batch_size`` at a time."""
        if not texts:
            return torch.empty(0, self.embedding_dim)
        step = self.text_batch_size
        return torch.cat([self._encode_text_chunk(texts[i : i + step]) for i in range(0, len(texts), step)])

    @torch.inference_mode()
    def _encode_text_chunk(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self._tokenizer(list(texts)).to(self.device)
        return self._model.encode_text(tokens, normalize=True).float().cpu()


@register_backend("open_clip")
def create_open_clip_backend(
    device: torch.device,
    dtype: torch.dtype,
    architecture: str = "ViT-B-32",
    pretrained: str | None = None,
    cache_dir: str | None = None,
    text_batch_size: int = 256,
    torch_compile: bool = False,
) -> OpenClipBackend:
    """Factory for presets with ``backend: open_clip``.

    ``pretrained``: see :func:`resolve_open_clip_source`; ``torch_compile`` wraps the image encoder in
    ``torch.compile`` (worth it on CUDA for long-running servers).
    """
    components = load_open_clip(architecture, pretrained, device=device, dtype=dtype, cache_dir=cache_dir)
    return OpenClipBackend(
        components,
        open_clip.get_tokenizer(components.source.model_name, cache_dir=cache_dir),
        name=f"open_clip:{components.source.describe()}",
        device=device,
        dtype=dtype,
        text_batch_size=text_batch_size,
        compile_image_encoder=torch_compile,
    )
