"""The PyTorch backend of the runtime interface, for float32 checkpoint directories."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tinyllm.checkpoint import load_checkpoint
from tinyllm.devices import resolve_device
from tinyllm.model import Transformer
from tinyllm.runtime.base import Runtime
from tinyllm.tokenizer import Tokenizer


class TorchRuntime(Runtime):
    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str = "torch-f32"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.n_ctx = model.config.max_seq_len
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(1)
        self.metadata = model.config.extra

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> "TorchRuntime":
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = load_checkpoint(path, resolve_device(device))
        return cls(model, tokenizer)

    def reset(self) -> None:
        self.cache.reset()

    @property
    def cache_length(self) -> int:
        return self.cache.length

    @torch.inference_mode()
    def forward(self, ids: Sequence[int]) -> np.ndarray:
        idx = torch.as_tensor(list(ids), dtype=torch.long, device=self.device).unsqueeze(0)
        return self.model(idx, self.cache)[0].float().cpu().numpy()

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({torch.get_num_threads()} threads, float32 matmuls)"
