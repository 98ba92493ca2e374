"""From a data source to training batches: documents, a train/validation split, token streams.

A `DataSpec` (source, corpus size, seed, validation fraction) is recorded in every checkpoint's
config so any later command (evaluation, the bench, calibration) rebuilds exactly the same split.
Batches are drawn statelessly from (seed, step): a resumed run, or a run with a different number
of processes, sees the same global batch at the same step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from tinyllm.data import BUILTIN_DEFAULT_SIZE, encode_documents, load_documents, split_documents
from tinyllm.tokenizer import Tokenizer


@dataclass(frozen=True)
class DataSpec:
    source: str = "builtin"  # "builtin" or a path (.txt, directory, .jsonl)
    size: int = BUILTIN_DEFAULT_SIZE  # characters of built-in corpus
    seed: int = 0
    val_fraction: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(**{k: d[k] for k in ("source", "size", "seed", "val_fraction") if k in d})


def load_splits(spec: DataSpec) -> tuple[list[str], list[str]]:
    """(train documents, validation documents), disjoint by document."""
    docs = load_documents(spec.source, size=spec.size, seed=spec.seed)
    return split_documents(docs, spec.val_fraction, seed=spec.seed)


def tokenize(tokenizer: Tokenizer, docs: list[str]) -> np.ndarray:
    """One int32 stream: each document's tokens followed by <|endoftext|>."""
    return encode_documents(docs, tokenizer.encode_batch, tokenizer.eot_id)


def batch_offsets(n_tokens: int, seq_len: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Start offsets of the `batch_size` windows that make up the global batch of `step`."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - seq_len - 1, size=batch_size)


def windows(tokens: np.ndarray, offsets: np.ndarray, seq_len: int, device: torch.device):
    """Inputs and next-token targets, [len(offsets), seq_len] each."""
    rows = np.stack([tokens[o:o + seq_len + 1] for o in offsets]).astype(np.int64)
    data = torch.from_numpy(rows).to(device)
    return data[:, :-1], data[:, 1:]


def eval_offsets(n_tokens: int, seq_len: int, max_windows: int) -> np.ndarray:
    """Fixed, non-overlapping windows from the start of the validation stream."""
    count = min(max_windows, (n_tokens - 1) // seq_len)
    return np.arange(count) * seq_len
