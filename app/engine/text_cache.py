"""Bounded LRU cache of prompt embeddings keyed by (model, prompt): repeated label sets cost nothing."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class TextEmbeddingCache:
    """Thread-safe LRU of normalised prompt embeddings."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, model: str, prompts: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Cached vectors by prompt, and the prompts still missing (deduplicated, in order)."""
        found: dict[str, np.ndarray] = {}
        missing: dict[str, None] = {}  # ordered set: O(1) membership (a list made this quadratic)
        with self._lock:
            for prompt in prompts:
                key = (model, prompt)
                vec = self._data.get(key)
                if vec is not None:
                    self._data.move_to_end(key)
                    found[prompt] = vec
                    self.hits += 1
                elif prompt not in found and prompt not in missing:
                    missing[prompt] = None
                    self.misses += 1
        return found, list(missing)

    def put_many(self, model: str, prompts: list[str], vectors: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            for prompt, vec in zip(prompts, vectors, strict=True):
                self._data[(model, prompt)] = vec
                self._data.move_to_end((model, prompt))
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
