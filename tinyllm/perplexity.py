"""Perplexity the way llama.cpp's `llama-perplexity` measures it, for any runtime.

Tokenize the whole text once (no BOS), cut it into chunks of `n_ctx` tokens (the tail that does
not fill a chunk is dropped), run each chunk from an empty cache, and score only the second half
of each chunk: the logits at positions n_ctx/2 … n_ctx-2 predicting the tokens after them. Every
format is measured on the same tokens this way, so their numbers compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tinyllm.errors import TinyLLMError


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token, nats
    n_tokens: int  # tokens scored
    n_chunks: int
    n_ctx: int


def chunks(tokens: Sequence[int], n_ctx: int) -> list[Sequence[int]]:
    if n_ctx < 4:
        raise TinyLLMError(f"--ctx {n_ctx}: too small to score half a chunk")
    n_chunks = len(tokens) // n_ctx
    if n_chunks == 0:
        raise TinyLLMError(f"the evaluation text has {len(tokens)} tokens, fewer than one chunk of "
                           f"n_ctx={n_ctx}; use a longer text or a smaller --ctx")
    return [tokens[i * n_ctx:(i + 1) * n_ctx] for i in range(n_chunks)]


def scored_targets(tokens: Sequence[int], n_ctx: int) -> np.ndarray:
    """The token ids that perplexity scores, in order (for baselines over the same tokens)."""
    first = n_ctx // 2
    return np.concatenate([np.asarray(c[first + 1:]) for c in chunks(tokens, n_ctx)])


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    return log_z - logits[np.arange(len(targets)), targets]


def perplexity(logits_fn: Callable[[Sequence[int]], np.ndarray], tokens: Sequence[int], n_ctx: int,
               progress: Callable[[int], None] | None = None) -> PerplexityResult:
    """`logits_fn(chunk)` returns [len(chunk), vocab] logits from an empty cache."""
    first = n_ctx // 2
    nll, count = 0.0, 0
    all_chunks = chunks(tokens, n_ctx)
    for chunk in all_chunks:
        logits = logits_fn(chunk)
        targets = np.asarray(chunk[first + 1:])
        nll += float(token_nll(logits[first:n_ctx - 1], targets).sum())
        count += len(targets)
        if progress:
            progress(1)
    mean = nll / count
    return PerplexityResult(math.exp(mean), mean, count, len(all_chunks), n_ctx)


def unigram_perplexity(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """The baseline a model must beat: token frequencies of the training split (add-one smoothed)."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return math.exp(-float(log_p[targets].mean()))
