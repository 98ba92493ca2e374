"""The runtime interface every backend implements: logits for token chunks, with a KV cache.

Logits cross the interface as float32 NumPy arrays [tokens, vocab], the common currency of
PyTorch, onnxruntime and llama.cpp, so sampling and perplexity are written once on top.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterator, Sequence

import numpy as np

from tinyllm.perplexity import PerplexityResult, perplexity
from tinyllm.sampling import Sampler, SamplingParams
from tinyllm.tokenizer import Tokenizer


class Runtime(ABC):
    name: str  # e.g. "torch-f32", shown in outputs
    tokenizer: Tokenizer
    n_ctx: int  # the most positions the cache holds
    metadata: dict = {}  # what tinyllm recorded with the model: preset, training data source…

    def warm_up(self) -> object:
        """Get ready to decode before the first token (the PyTorch backend compiles its decode
        step here), so that a command can say what it cost before streaming any text."""

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

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, sampler: Sampler | SamplingParams,
                 stop: set[int]) -> Iterator[int]:
        """New token ids until a stop token (not yielded) or `max_new_tokens`.

        The default runs tinyllm's cached decode loop on `forward()` with tinyllm's sampler; a
        backend with its own sampler (llama.cpp) overrides this and maps the same parameters.
        """
        from tinyllm.generate import generate_tokens

        if isinstance(sampler, SamplingParams):
            sampler = Sampler(sampler)
        return generate_tokens(self, prompt_ids, max_new_tokens, sampler, stop)

    def perplexity(self, text: str, n_ctx: int, progress: Callable[[int], None] | None = None) -> PerplexityResult:
        """Perplexity of `text` by llama-perplexity's method: tokenized once, no BOS, special-token
        strings as plain text. A backend with its own tool for this (llama.cpp) overrides it."""
        tokens = self.tokenizer.encode(text, parse_special=False)
        return perplexity(self.logits, tokens, n_ctx, progress)

    def describe(self) -> str:
        """One line on what runs: backend, device, kernels."""
        return self.name
