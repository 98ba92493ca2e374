"""Runtimes: one small interface (`base.Runtime`), one backend per engine.

The PyTorch backend lives here from the start; onnxruntime and llama.cpp backends join it with
their exporters. Everything above (generation, chat, perplexity, the bench) talks only to
`Runtime`, so the logic is written once.
"""

from pathlib import Path

from tinyllm.runtime.base import Runtime


def load_runtime(path: str | Path, device: str = "cpu", threads: int | None = None) -> Runtime:
    """Open a model file or directory with the backend its format needs."""
    from tinyllm.runtime.torch_runtime import TorchRuntime

    return TorchRuntime.load(path, device=device, threads=threads)


__all__ = ["Runtime", "load_runtime"]
