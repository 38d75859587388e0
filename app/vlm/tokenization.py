"""Text tokenizers without torch: the ``tokenizers`` library reading a ``tokenizer.json`` that the export
step wrote (and checked against the model's own tokenizer on probe texts).

- :class:`HFTokenizer`: BERT / CLIP / SigLIP tokenizers from transformers (special tokens, truncation and
  padding as the model's ``tokenizer(..., padding=..., truncation=True, max_length=...)``).
- :class:`ClipBpeTokenizer`: open_clip's ``SimpleTokenizer`` (OpenAI CLIP BPE): the same text cleaning
  (ftfy, HTML unescape, whitespace, lower case), ``[sot] + bpe + [eot]``, truncated to the context length
  with ``eot`` last, zero-padded.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from tokenizers import Tokenizer

# probe texts for the export-time tokenizer equality check (ASCII, punctuation, accents, CJK, emoji, long)
PROBE_TEXTS = (
    "a photo of a cat.",
    "a black and white photo of a tabby, tabby cat",
    "Hello, World!! it's 3.14 ok?",
    "naïve café — déjà vu",
    "fish &amp; chips",
    "日本語のテキスト",
    "  multiple   spaces\tand\nnewlines ",
    "don't stop-believing",
    "emoji 🙂 test",
    "word " * 80,
)


class TextTokenizer(Protocol):
    """Texts -> the text tower's integer inputs by name (int64 arrays)."""

    @property
    def input_names(self) -> tuple[str, ...]: ...

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]: ...


class HFTokenizer:
    """A transformers fast tokenizer's ``tokenizer.json``, run by the ``tokenizers`` library."""

    def __init__(
        self,
        path: Path,
        *,
        max_length: int,
        padding: Literal["longest", "max_length"],
        pad_id: int,
        pad_token: str,
        input_names: tuple[str, ...] = ("input_ids", "attention_mask"),
    ) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(
            pad_id=pad_id, pad_token=pad_token, length=max_length if padding == "max_length" else None
        )
        self.input_names = input_names

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names}


_WHITESPACE = re.compile(r"\s+")


def clean_clip_text(text: str) -> str:
    """open_clip's default cleaning (``clean='lower'``): ftfy, HTML unescape twice, whitespace, lower."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class ClipBpeTokenizer:
    """open_clip's ``SimpleTokenizer`` semantics over a ``tokenizers`` BPE model (no special tokens added by
    the library: they are placed here exactly as open_clip does)."""

    input_names = ("text",)

    def __init__(self, path: Path, *, context_length: int, sot_id: int, eot_id: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.context_length, self.sot_id, self.eot_id = context_length, sot_id, eot_id

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        cleaned = [clean_clip_text(t) for t in texts]
        for row, encoding in enumerate(self._tokenizer.encode_batch(cleaned, add_special_tokens=False)):
            ids = [self.sot_id, *encoding.ids, self.eot_id][: self.context_length]
            ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return {"text": out}


class TransformersTokenizer:
    """Fallback for tokenizers with no ``tokenizers`` form (e.g. SigLIP's SentencePiece): transformers'
    own tokenizer saved with the exports. Importing transformers imports torch, so a model that needs this
    is not torch-free when served."""

    def __init__(
        self,
        folder: Path,
        *,
        max_length: int,
        padding: Literal["longest", "max_length"],
        input_names: tuple[str, ...] = ("input_ids", "attention_mask"),
        **_: object,
    ) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self.max_length, self.padding, self.input_names = max_length, padding, input_names

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        tokens = self._tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {name: np.asarray(tokens[name], dtype=np.int64) for name in self.input_names}
