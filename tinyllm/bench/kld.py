"""The float32 reference the bench compares every format against, in llama.cpp's own file format.

`llama-perplexity --kl-divergence-base FILE` saves a model's log-probabilities so that a later
`llama-perplexity --kl-divergence` run of another model can report KL divergence and top-1
agreement against them. tinyllm writes that file from torch-f32's logits, so the llama.cpp rows
are compared against the very reference the torch and onnxruntime rows are, by llama.cpp's own
tool, on the same tokens. The layout (llama.cpp tools/perplexity/perplexity.cpp):

    "_logits_"  uint32 n_ctx  int32 n_vocab  int32 n_chunk  int32 tokens[n_ctx * n_chunk]
    per chunk, per scored position (n_ctx/2 … n_ctx-2): float32 scale, float32 min_log_prob,
    then n_vocab uint16 q (padded to an even count), log p = min_log_prob + scale * q

Log-probabilities more than 16 nats below the top logit are clamped, as llama.cpp does. The
torch and onnxruntime rows are scored against the decoded file by `compare`, which mirrors
llama.cpp's arithmetic, so every row's KL and top-1 come from the same stored reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_write

MAGIC = b"_logits_"
_RANGE = 16.0  # nats below the top logit that the uint16 codes cover


def _row_width(n_vocab: int) -> int:
    """uint16 entries per scored position: two float32 (scale, min) and the padded codes."""
    return 2 * ((n_vocab + 1) // 2) + 4


def encode(logits: np.ndarray) -> np.ndarray:
    """[positions, vocab] float32 logits -> [positions, row_width] uint16 rows, as llama.cpp stores them."""
    logits = logits.astype(np.float32)
    n, vocab = logits.shape
    top = logits.max(axis=1)
    low = np.maximum(logits.min(axis=1), top - _RANGE)
    log_sum_exp = np.log(np.exp((logits - top[:, None]).astype(np.float64)).sum(axis=1)).astype(np.float32)
    scale = ((top - low) / np.float32(65535)).astype(np.float32)
    rows = np.zeros((n, _row_width(vocab)), np.uint16)
    header = np.stack([scale, (low - top - log_sum_exp).astype(np.float32)], axis=1)
    rows[:, :4] = header.view(np.uint16)
    with np.errstate(divide="ignore"):
        inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    q = np.rint(inv[:, None] * (logits - low[:, None]))
    rows[:, 4:4 + vocab] = np.where(logits > low[:, None], q, 0).astype(np.uint16)
    return rows


def decode(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """[positions, row_width] uint16 -> [positions, vocab] float32 log-probabilities."""
    header = np.ascontiguousarray(rows[:, :4]).view(np.float32)
    return header[:, 1:2] + header[:, 0:1] * rows[:, 4:4 + n_vocab].astype(np.float32)


@dataclass
class Comparison:
    """Running sums of the fidelity figures over scored tokens (llama.cpp's kl_divergence_result)."""

    count: int = 0
    nll: float = 0.0
    kld: float = 0.0
    same_top: int = 0
    kld_values: list = field(default_factory=list)

    def add(self, base_log_probs: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
        logits = logits.astype(np.float64)
        log_probs = logits - logits.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        base = base_log_probs.astype(np.float64)
        # llama.cpp leaves out the terms whose stored log-probability is at the clamp (-16 nats).
        per_token = np.where(base > -_RANGE, np.exp(base) * (base - log_probs), 0.0).sum(axis=1)
        self.count += len(targets)
        self.nll -= float(log_probs[np.arange(len(targets)), targets].sum())
        self.kld += float(per_token.sum())
        self.same_top += int((base.argmax(axis=1) == logits.argmax(axis=1)).sum())
        self.kld_values.extend(per_token.tolist())

    def figures(self) -> dict:
        mean_nll = self.nll / self.count
        return {"nll": mean_nll, "ppl": float(np.exp(mean_nll)), "kld_mean": self.kld / self.count,
                "kld_median": float(np.median(self.kld_values)), "top1_agreement": self.same_top / self.count,
                "scored_tokens": self.count}


class Reference:
    """The KL-divergence base file: written once from torch-f32, read for every other row."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @staticmethod
    def write(path: Path, n_ctx: int, n_vocab: int, chunks: Sequence[Sequence[int]],
              encoded: Sequence[np.ndarray]) -> "Reference":
        """`encoded[i]`: `encode` of chunk i's logits at positions n_ctx/2 … n_ctx-2."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(MAGIC)
                f.write(np.array([n_ctx, n_vocab, len(chunks)], np.int32).tobytes())
                f.write(np.asarray(chunks, np.int32).tobytes())
                for rows in encoded:
                    f.write(rows.tobytes())

        atomic_write(Path(path), write)
        return Reference(path)

    def read(self) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(n_ctx, n_vocab, tokens [n_chunk, n_ctx], rows [n_chunk, scored, row_width])."""
        data = self.path.read_bytes()
        if data[:8] != MAGIC:
            raise TinyLLMError(f"{self.path}: not a llama.cpp KL-divergence base file")
        n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(data, np.int32, 3, 8))
        tokens = np.frombuffer(data, np.int32, n_ctx * n_chunk, 20).reshape(n_chunk, n_ctx)
        scored = n_ctx - 1 - n_ctx // 2
        offset = 20 + tokens.nbytes
        rows = np.frombuffer(data, np.uint16, n_chunk * scored * _row_width(n_vocab), offset)
        return n_ctx, n_vocab, tokens, rows.reshape(n_chunk, scored, _row_width(n_vocab))
