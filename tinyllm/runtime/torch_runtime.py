"""The PyTorch backend of the runtime interface, for float32 checkpoint directories.

Prompts (and perplexity chunks) run eagerly; single-token decode steps run on the compiled step
of `compiled.py` when compiling is on (`compile=None`: the default for the device, see
`compiled.default_compile`), else eagerly too. Both write the same cache. The step is compiled
on the first decode, or before it by `warm_up()`, so a runtime used only for logits never is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from tinyllm.checkpoint import load_checkpoint
from tinyllm.devices import resolve_device
from tinyllm.model import Transformer
from tinyllm.runtime import compiled
from tinyllm.runtime.base import Runtime
from tinyllm.tokenizer import Tokenizer


class TorchRuntime(Runtime):
    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str = "torch-f32",
                 compile: bool | None = None, log: Callable[[str], None] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.n_ctx = model.config.max_seq_len
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(1)
        self.metadata = model.config.extra
        self.log = log
        self.decode_step = None
        on = compiled.default_compile(self.device) if compile is None else compile
        self.compile_info = None if on else compiled.CompileInfo(
            False, reason="--no-compile" if compile is False else f"the default on {self.device.type}")

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None, compile: bool | None = None,
             log: Callable[[str], None] | None = None) -> "TorchRuntime":
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = load_checkpoint(path, resolve_device(device))
        return cls(model, tokenizer, compile=compile, log=log)

    def warm_up(self) -> compiled.CompileInfo:
        """Compile the decode step now, unless done or off; what became of compiling."""
        if self.compile_info is None:
            self.decode_step, self.compile_info = compiled.prepare(self.model, self.cache, self.log)
        return self.compile_info

    def reset(self) -> None:
        self.cache.reset()

    @property
    def cache_length(self) -> int:
        return self.cache.length

    @torch.inference_mode()
    def forward(self, ids: Sequence[int]) -> np.ndarray:
        if len(ids) == 1 and self.warm_up().compiled:
            return self.decode_step(int(ids[0])).float().cpu().numpy()
        idx = torch.as_tensor(list(ids), dtype=torch.long, device=self.device).unsqueeze(0)
        return self.model(idx, self.cache)[0].float().cpu().numpy()

    def decode_path(self) -> str:
        if self.compile_info is None:
            return "decode step compiled on first use"
        return f"compiled decode step: {self.compile_info.how}" if self.compile_info.compiled else "eager decode"

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({torch.get_num_threads()} threads, float32 matmuls, {self.decode_path()})"
