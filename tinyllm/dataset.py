"""From a data source to training batches: documents, a train/validation split, token streams.

A `DataSpec` (source, corpus size and mix, seed, validation fraction) is recorded in every
checkpoint's config so any later command (evaluation, the bench, calibration) rebuilds exactly the
same split. Training streams say which tokens are targets: in chat documents only the assistant's
replies (and the <|im_end|> that closes each) unless the run trains on everything, so the model
learns to answer rather than to ask. Batches are drawn statelessly from (seed, step): a resumed
run, or a run with a different number of processes, sees the same global batch at the same step.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from tinyllm.chat import IM_END, IM_START
from tinyllm.data import BUILTIN_DEFAULT_SIZE, BUILTIN_QA_FRACTION, encode_documents, load_documents, split_documents
from tinyllm.tokenizer import Tokenizer

TRAIN_ON = ("assistant", "all")  # chat documents: the assistant's replies only, or every token
IGNORE_INDEX = -100  # a target cross-entropy skips (PyTorch's default ignore_index)
_ASSISTANT_REPLY = re.compile(re.escape(IM_START) + r"assistant\n(.*?" + re.escape(IM_END) + ")", re.DOTALL)
_ENCODE_CHUNK = 1024  # documents per encode call: bounds the lists held at once


@dataclass(frozen=True)
class DataSpec:
    source: str = "builtin"  # "builtin", a path (.txt, .jsonl, directory, dataset files) or hf:NAME[:SPLIT]
    size: int = BUILTIN_DEFAULT_SIZE  # characters of built-in corpus
    seed: int = 0
    val_fraction: float = 0.05
    qa_fraction: float = BUILTIN_QA_FRACTION  # of the built-in corpus: chats on the world's facts

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def load_splits(spec: DataSpec) -> tuple[list[str], list[str]]:
    """(train documents, validation documents): disjoint by document, or by position for one document."""
    docs = load_documents(spec.source, size=spec.size, seed=spec.seed, qa_fraction=spec.qa_fraction)
    return split_documents(docs, spec.val_fraction, seed=spec.seed)


def tokenize(tokenizer: Tokenizer, docs: list[str]) -> np.ndarray:
    """One int32 stream: each document's tokens followed by <|endoftext|>."""
    return encode_documents(docs, tokenizer.encode_batch, tokenizer.eot_id)


def tokenize_for_training(tokenizer: Tokenizer, docs: list[str], train_on: str = "assistant"
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The stream `tokenize` makes, and a bool array beside it: which tokens are training targets.

    With train_on="assistant", a chat document (one that holds <|im_start|>) contributes only the
    tokens of its assistant replies and their closing <|im_end|>; other documents, and every
    document with train_on="all", contribute all their tokens and the <|endoftext|> after them.
    """
    tokens, targets = [], []
    for start in range(0, len(docs), _ENCODE_CHUNK):
        batch = docs[start:start + _ENCODE_CHUNK]
        for doc, (ids, offsets) in zip(batch, tokenizer.encode_batch_with_offsets(batch)):
            tokens.append(np.asarray(ids + [tokenizer.eot_id], dtype=np.int32))
            if train_on == "all" or IM_START not in doc:
                targets.append(np.ones(len(ids) + 1, dtype=bool))
            else:
                targets.append(np.append(_inside_replies(doc, offsets), False))
    if not tokens:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=bool)
    return np.concatenate(tokens), np.concatenate(targets)


def _inside_replies(doc: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """For each token (by its character offsets), whether it overlaps an assistant reply."""
    edges = np.zeros(len(doc) + 1, dtype=np.int64)
    for reply in _ASSISTANT_REPLY.finditer(doc):
        edges[reply.start(1)] += 1
        edges[reply.end(1)] -= 1
    covered = np.concatenate([[0], np.cumsum(np.cumsum(edges)[:-1] > 0)])  # replies' characters before i
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return covered[spans[:, 1]] > covered[spans[:, 0]]


def batch_offsets(n_tokens: int, seq_len: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Start offsets of the `batch_size` windows that make up the global batch of `step`."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - seq_len - 1, size=batch_size)


def windows(tokens: np.ndarray, offsets: np.ndarray, seq_len: int, device: torch.device,
            targets: np.ndarray | None = None):
    """Inputs and next-token targets, [len(offsets), seq_len] each; with a `targets` mask from
    `tokenize_for_training`, the targets it leaves out are IGNORE_INDEX."""
    rows = np.stack([tokens[o:o + seq_len + 1] for o in offsets]).astype(np.int64)
    inputs, labels = rows[:, :-1], rows[:, 1:].copy()
    if targets is not None:
        labels[~np.stack([targets[o + 1:o + seq_len + 1] for o in offsets])] = IGNORE_INDEX
    return torch.from_numpy(np.ascontiguousarray(inputs)).to(device), torch.from_numpy(labels).to(device)


def eval_offsets(n_tokens: int, seq_len: int, max_windows: int) -> np.ndarray:
    """Fixed, non-overlapping windows from the start of the validation stream."""
    count = min(max_windows, (n_tokens - 1) // seq_len)
    return np.arange(count) * seq_len
