"""The dual encoder both CLIP-family backends (open_clip, transformers) serve: an image tower whose raw
output is L2-normalised into the joint space (the raw output is also TrustVLM's ``vlm`` image space, so it
costs no second forward) and a text tower fed by a tokenizer, encoded ``text_batch_size`` texts at a time.
Logits are ``logit_scale * cos + logit_bias`` (CLIP, Radford et al. 2021; SigLIP, Zhai et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from app.runtime.executors import TowerExecutor
from app.runtime.types import TowerReport
from app.vlm.base import ImageEncoding, encode_in_chunks, l2_normalize
from app.vlm.preprocessing import ImagePreprocessor


class DualEncoderBackend:
    """A :class:`~app.vlm.base.VLMBackend` over an image tower and a text tower on any runtime."""

    def __init__(
        self,
        image_tower: TowerExecutor,
        text_tower: TowerExecutor,
        preprocessor: ImagePreprocessor,
        tokenizer: Callable[[Sequence[str]], dict[str, np.ndarray]],
        *,
        name: str,
        logit_scale: float,
        logit_bias: float = 0.0,
        text_batch_size: int = 256,
        model_type: str = "",
        towers: dict[str, TowerReport] | None = None,
    ) -> None:
        self.name, self.model_type = name, model_type
        self._image, self._text = image_tower, text_tower
        self.preprocessor, self._tokenizer = preprocessor, tokenizer
        self.text_batch_size = text_batch_size
        self.logit_scale, self.logit_bias = float(logit_scale), float(logit_bias)
        self.towers = towers or {}
        self.embedding_dim: int = int(self._encode_text_chunk([""]).shape[1])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> (3, H, W) float32 with the checkpoint's resize/crop/normalisation."""
        return self.preprocessor(image)

    def encode_images(self, pixels: np.ndarray) -> ImageEncoding:
        """(B, 3, H, W) -> normalised embeddings and the raw (pre-normalisation) image-tower output."""
        [raw] = self._image.run({"pixels": pixels})
        return ImageEncoding(embeddings=l2_normalize(raw), features=raw)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, D) normalised embeddings; tokenised and encoded ``text_batch_size`` at a time."""
        return encode_in_chunks(self._encode_text_chunk, texts, self.text_batch_size, self.embedding_dim)

    def _encode_text_chunk(self, texts: Sequence[str]) -> np.ndarray:
        [raw] = self._text.run(self._tokenizer(list(texts)))
        return l2_normalize(raw)
