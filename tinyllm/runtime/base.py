"""The runtime interface every backend implements: logits for token chunks, with a KV cache.

Logits cross the interface as float32 NumPy arrays [tokens, vocab], the common currency of
PyTorch, onnxruntime and llama.cpp, so sampling and perplexity are written once on top.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from tinyllm.tokenizer import Tokenizer


class Runtime(ABC):
    name: str  # e.g. "torch-f32", shown in outputs
    tokenizer: Tokenizer
    n_ctx: int  # the most positions the cache holds
    metadata: dict = {}  # what tinyllm recorded with the model: preset, training data source…

    @abstractmethod
    def reset(self) -> None:
        """Forget every cached position."""

    @property
    @abstractmethod
    def cache_length(self) -> int:
        """How many positions the cache holds now."""

    @abstractmethod
    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Append `ids` after the cached positions; return their logits, [len(ids), vocab] float32."""

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for a whole sequence from an empty cache (perplexity chunks)."""
        self.reset()
        out = self.forward(ids)
        self.reset()
        return out

    def describe(self) -> str:
        """One line on what runs: backend, device, kernels."""
        return self.name
