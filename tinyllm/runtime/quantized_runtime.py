"""The PyTorch backend for quantized checkpoint directories (written by `tinyllm-quantize`).

The model is `quantize.modules.QuantizedTransformer`: the same decoder with its matrices running
on the stored codes, so everything `TorchRuntime` does (cache, logits, generation, the compiled
decode step) is unchanged; only loading and the description of which kernels run differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from tinyllm.devices import resolve_device
from tinyllm.runtime.torch_runtime import TorchRuntime


class QuantizedTorchRuntime(TorchRuntime):
    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None, compile: bool | None = None,
             log: Callable[[str], None] | None = None, kernel: str = "auto") -> "QuantizedTorchRuntime":
        from quantize.checkpoint import load_quantized

        if threads:
            torch.set_num_threads(threads)
        model, tokenizer, info = load_quantized(path, resolve_device(device), kernel)
        return cls(model, tokenizer, f"torch-{info['scheme']}-{info['method']}", compile, log)

    def describe(self) -> str:
        paths = ", ".join(f"{n} {k}" for k, n in sorted(self.model.kernel_paths().items()))
        return (f"{self.name} on {self.device} ({torch.get_num_threads()} threads; "
                f"quantized matmuls: {paths}; float32 activations; {self.decode_path()})")
