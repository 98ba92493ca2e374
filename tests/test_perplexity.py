"""Perplexity by llama-perplexity's method: chunks of n_ctx, second half scored."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinyllm.errors import TinyLLMError
from tinyllm.perplexity import chunks, perplexity, scored_targets, unigram_perplexity
from tinyllm.runtime import load_runtime


def test_uniform_logits_give_vocabulary_size():
    vocab = 50
    result = perplexity(lambda ids: np.zeros((len(ids), vocab), np.float32), list(range(45)) * 10, n_ctx=32)
    assert result.n_chunks == 450 // 32
    assert result.n_tokens == result.n_chunks * (32 - 1 - 16)
    assert math.isclose(result.ppl, vocab, rel_tol=1e-9)


def test_matches_cross_entropy_on_second_halves(trained_checkpoint):
    runtime = load_runtime(trained_checkpoint)
    tokens = runtime.tokenizer.encode("Mira keeps a grey cat. " * 60, parse_special=False)
    n_ctx = 64
    result = perplexity(runtime.logits, tokens, n_ctx)
    losses = []
    with torch.no_grad():
        for chunk in chunks(tokens, n_ctx):
            logits = runtime.model(torch.tensor([chunk]))[0]
            losses.append(F.cross_entropy(logits[32:63], torch.tensor(chunk[33:64]), reduction="none"))
    expected = torch.cat(losses).mean().item()
    assert math.isclose(result.nll, expected, rel_tol=1e-5)
    assert len(scored_targets(tokens, n_ctx)) == result.n_tokens


def test_too_short_text_is_refused():
    with pytest.raises(TinyLLMError, match="fewer than one chunk"):
        chunks(list(range(10)), 64)


def test_unigram_baseline_of_a_constant_stream():
    train = np.zeros(99, dtype=np.int64)
    # add-one smoothing over 2 tokens: p(0) = 100/101
    assert math.isclose(unigram_perplexity(train, np.zeros(5, np.int64), 2), 101 / 100)
