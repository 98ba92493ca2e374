"""What `tinyllm serve MODEL` was given, and the engine that serves it.

    a .gguf file                       llama-server on it
    a checkpoint directory             its lossless GGUF export (a float32 checkpoint as F32, a
      (float32 or tinyllm-quantize)    quantized one with its own blocks copied), made once and
                                       cached by content, then llama-server on that
    an ONNX directory                  onnxruntime-genai in this process
      (genai_config.json)

The checkpoint's export is the bench's artifact machinery (tinyllm.bench.artifacts): the key hashes
the checkpoint's files and tinyllm's writer code, so a changed checkpoint or exporter makes a new
file and an unchanged one is reused. The cache is $XDG_CACHE_HOME/tinyllm/serve (~/.cache/…).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tinyllm.checkpoint import REQUIRED_FILES
from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import cache_root, find_llama_cpp
from tinyllm.serve.app import Engine
from tinyllm.serve.onnx_engine import GENAI_CONFIG


@dataclass
class EngineOptions:
    """The flags of `tinyllm serve` that reach the engine; the same for every backend."""

    ctx: int | None = None
    threads: int | None = None
    parallel: int = 4
    device: str = "cpu"
    n_gpu_layers: int | None = None  # GGUF only; None: every layer with --device cuda, none on cpu
    llama_cpp_dir: Path | None = None
    verbose: bool = False


def model_kind(path: Path) -> str:
    """'gguf', 'checkpoint' or 'onnx', or a TinyLLMError that says what MODEL may be."""
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise TinyLLMError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    if path.is_dir():
        if (path / GENAI_CONFIG).is_file():
            return "onnx"
        if (path / "model.onnx").is_file():
            raise TinyLLMError(f"{path}: an ONNX directory without {GENAI_CONFIG}, which onnxruntime-genai needs; "
                               "export it with `tinyllm-export onnx`")
        if all((path / name).is_file() for name in REQUIRED_FILES):
            return "checkpoint"
    elif not path.exists():
        raise TinyLLMError(f"{path}: no such file or directory")
    raise TinyLLMError(f"{path}: not a model tinyllm serves; give a .gguf file, a checkpoint directory "
                       f"({', '.join(REQUIRED_FILES)}) or an ONNX directory ({GENAI_CONFIG})")


def checkpoint_gguf(checkpoint: Path, log: Callable[[str], None]) -> Path:
    """The checkpoint's lossless GGUF export from the cache, made first if it is not there."""
    from quantize.checkpoint import quantization_info
    from tinyllm.bench.artifacts import Artifacts
    from tinyllm.bench.formats import Format

    info = quantization_info(checkpoint)
    what = f"{info['format']} blocks copied" if info else "F32"
    fmt = Format("gguf", "llama.cpp", "gguf", None, what=f"GGUF {what}, once: it is cached by content")
    artifact = Artifacts(checkpoint, cache_root() / "serve", None, calib_tokens=0, log=log).get(fmt)
    how = "reused from the cache" if artifact.cached else f"exported in {artifact.build_seconds:.1f} s"
    log(f"{checkpoint} ({'quantized' if info else 'float32'} checkpoint) → {artifact.path}: GGUF {what} ({how})")
    return artifact.path


def open_engine(model: Path, model_id: str | None, options: EngineOptions, log: Callable[[str], None]) -> Engine:
    """The started engine for MODEL; `log` hears what was done to get there."""
    kind = model_kind(model)
    model_id = model_id or (model.stem if kind == "gguf" else model.resolve().name)
    if kind == "onnx":
        if options.n_gpu_layers:
            raise TinyLLMError("--n-gpu-layers is for GGUF models; an ONNX model runs wholly on --device")
        from tinyllm.serve.onnx_engine import OnnxEngine

        log(f"{model}: ONNX directory, loading it in onnxruntime-genai")
        return OnnxEngine(model, model_id, options.ctx, options.threads, options.device, options.parallel)
    from tinyllm.serve.llama_engine import LlamaEngine

    find_llama_cpp(options.llama_cpp_dir).tool("llama-server")  # before any export: the install command, first
    gguf = model if kind == "gguf" else checkpoint_gguf(model, log)
    n_gpu_layers = options.n_gpu_layers if options.n_gpu_layers is not None else (
        999 if options.device == "cuda" else 0)
    engine = LlamaEngine(gguf, model_id, options.ctx, options.threads, n_gpu_layers, options.parallel,
                         options.llama_cpp_dir, options.verbose)
    log(f"starting llama-server on {gguf}")
    return engine.start()
