"""Runtimes: one small interface (`base.Runtime`), one backend per engine.

`load_runtime` picks the backend from what the path holds: a `.gguf` file runs on llama.cpp, a
directory with `model.onnx` on onnxruntime, a checkpoint directory on PyTorch (a quantized one,
whose config.json has a `quantization_config`, on its codes). Everything above
(generation, chat, perplexity, the bench) talks only to `Runtime`, so the logic is written once.
"""

from pathlib import Path
from typing import Callable

from tinyllm.runtime.base import Runtime


def load_runtime(path: str | Path, device: str = "cpu", threads: int | None = None, compile: bool | None = None,
                 log: Callable[[str], None] | None = None) -> Runtime:
    """Open a model file or directory with the backend its format needs. `compile` and `log`
    are the PyTorch backend's (its compiled decode step: on, off, or None for the default)."""
    path = Path(path)
    if path.suffix == ".gguf":
        from tinyllm.runtime.llama_cpp_runtime import LlamaCppRuntime

        return LlamaCppRuntime.load(path, device=device, threads=threads)
    if (path / "model.onnx").is_file():
        from tinyllm.runtime.onnx_runtime import OnnxRuntime

        return OnnxRuntime.load(path, device=device, threads=threads)
    from quantize.checkpoint import quantization_info

    if quantization_info(path) is not None:
        from tinyllm.runtime.quantized_runtime import QuantizedTorchRuntime

        return QuantizedTorchRuntime.load(path, device=device, threads=threads, compile=compile, log=log)
    from tinyllm.runtime.torch_runtime import TorchRuntime

    return TorchRuntime.load(path, device=device, threads=threads, compile=compile, log=log)


__all__ = ["Runtime", "load_runtime"]
