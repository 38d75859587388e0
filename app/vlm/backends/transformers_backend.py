"""transformers backend: CLIP (Radford et al., 2021) and SigLIP (Zhai et al., 2023) dual encoders.

The model class is chosen from ``config.model_type`` of a Hub id or a local ``save_pretrained`` folder;
the tokenizer and image processor come from the same place.

Logits are ``logit_scale * cos(image, text) + logit_bias``. CLIP has no bias (``logit_bias = 0``). SigLIP
was trained with a per-pair sigmoid loss, so its calibrated probability that one label matches is
``sigmoid(logit)``; for zero-shot classification *among* labels the service still takes the softmax of the
logits (the bias is then a constant shift and changes nothing). The TrustVLM reference does the same for
SigLIP, with a fixed scale of 100 (the ``siglip-base`` preset sets ``logit_scale: 100``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    CLIPModel,
    PreTrainedModel,
    SiglipModel,
)

from app.vlm.base import ImageEncoding, register_backend

MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {"clip": CLIPModel, "siglip": SiglipModel}


class TransformersDualEncoderBackend:
    """A :class:`~app.vlm.base.VLMBackend` over a transformers ``CLIPModel`` or ``SiglipModel``.

    ``features`` in :class:`ImageEncoding` are the image embeddings before L2 normalisation (CLIP: after
    the visual projection; SigLIP: the attention-pooling head's output).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        image_processor: Any,
        *,
        name: str,
        device: torch.device,
        dtype: torch.dtype,
        text_batch_size: int = 256,
    ) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.model_type: str = model.config.model_type
        self._model = model
        self._tokenizer = tokenizer
        self._image_processor = image_processor
        self.text_batch_size = text_batch_size
        self.logit_scale: float = float(model.logit_scale.detach().float().exp().item())
        bias = getattr(model, "logit_bias", None)
        self.logit_bias: float = 0.0 if bias is None else float(bias.detach().float().item())
        # SigLIP pools the last token, so it needs the fixed-length padding it was trained with.
        self._text_padding = "max_length" if self.model_type == "siglip" else "longest"
        self.embedding_dim: int = int(self._encode_text_chunk([""]).shape[1])

    @property
    def _max_text_length(self) -> int:
        return int(self._model.config.text_config.max_position_embeddings)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, H, W) float32 with the checkpoint's own image processor."""
        batch = self._image_processor(images=image.convert("RGB"), return_tensors="pt")
        return batch["pixel_values"][0].float()

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> ImageEncoding:
        """(B, 3, H, W) -> normalised embeddings and the raw embeddings they came from."""
        pixels = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
        raw = self._model.get_image_features(pixel_values=pixels).pooler_output.float()
        embeddings = torch.nn.functional.normalize(raw, dim=-1)
        return ImageEncoding(embeddings=embeddings.cpu(), features=raw.cpu())

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, D) normalised embeddings, ``text_batch_size`` at a time."""
        if not texts:
            return torch.empty(0, self.embedding_dim)
        step = self.text_batch_size
        return torch.cat([self._encode_text_chunk(texts[i : i + step]) for i in range(0, len(texts), step)])

    @torch.inference_mode()
    def _encode_text_chunk(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self._tokenizer(
            list(texts),
            padding=self._text_padding,
            truncation=True,
            max_length=self._max_text_length,
            return_tensors="pt",
        ).to(self.device)
        # SigLIP was trained without a text attention mask (padding tokens are attended); match that.
        mask = None if self.model_type == "siglip" else tokens.get("attention_mask")
        raw = self._model.get_text_features(input_ids=tokens["input_ids"], attention_mask=mask)
        return torch.nn.functional.normalize(raw.pooler_output.float(), dim=-1).cpu()


@register_backend("transformers")
def create_transformers_backend(
    device: torch.device,
    dtype: torch.dtype,
    model_id: str,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    text_batch_size: int = 256,
) -> TransformersDualEncoderBackend:
    """Factory for presets with ``backend: transformers``; ``model_id`` is a Hub id or a local folder."""
    hub_kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache_dir,
        "local_files_only": local_files_only,
    }
    config = AutoConfig.from_pretrained(model_id, **hub_kwargs)
    if config.model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{model_id!r} is a {config.model_type!r} model; "
            f"the transformers backend serves {sorted(MODEL_CLASSES)}"
        )
    model = MODEL_CLASSES[config.model_type].from_pretrained(model_id, dtype=dtype, **hub_kwargs)
    model = model.to(device).eval()
    return TransformersDualEncoderBackend(
        model,
        AutoTokenizer.from_pretrained(model_id, **hub_kwargs),
        AutoImageProcessor.from_pretrained(model_id, **hub_kwargs),
        name=f"transformers:{model_id}",
        device=device,
        dtype=dtype,
        text_batch_size=text_batch_size,
    )
