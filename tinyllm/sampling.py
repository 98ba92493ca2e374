"""Choosing the next token from logits: temperature, top-k, top-p, repetition penalty, seed.

Written once on NumPy logits so every runtime samples identically. Temperature 0 is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tinyllm.errors import TinyLLMError


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1 = off
    repetition_penalty: float = 1.1  # 1 = off; llama.cpp's rule over the last `repeat_last_n` tokens
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        if not self.temperature >= 0:
            raise TinyLLMError(f"--temperature {self.temperature}: must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise TinyLLMError(f"--top-k {self.top_k}: must be >= 0 (0 turns it off)")
        if not 0 < self.top_p <= 1:
            raise TinyLLMError(f"--top-p {self.top_p}: must be in (0, 1] (1 turns it off)")
        if not self.repetition_penalty > 0:
            raise TinyLLMError(f"--repetition-penalty {self.repetition_penalty}: must be > 0 (1 turns it off)")
        if self.repeat_last_n < 0:
            raise TinyLLMError(f"repeat_last_n {self.repeat_last_n}: must be >= 0")
        return self


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float64).copy()
        if p.repetition_penalty != 1 and p.repeat_last_n and len(history):
            recent = np.unique(np.asarray(history[-p.repeat_last_n:]))
            values = logits[recent]
            logits[recent] = np.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if p.temperature == 0:
            return int(np.argmax(logits))
        logits /= p.temperature
        if 0 < p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits[logits < kth] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            keep = order[: int(np.searchsorted(cumulative, p.top_p)) + 1]
            mask = np.zeros_like(probs, dtype=bool)
            mask[keep] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))
