"""Measuring one PyTorch or onnxruntime row, in a process of its own.

Each row runs in a fresh process (multiprocessing, spawn) so that its peak resident memory is its
own and no row inherits another's allocator or thread pools. In that process:

  speed     batch 1: prefill of a P-token prompt from an empty cache; decode of N tokens fed one
            at a time with the cache, greedy, only the forward passes timed (sampling excluded);
            `warmup` untimed runs, then `repeats` timed ones (median, min–max). PyTorch rows decode
            on the compiled step unless the bench is told --no-compile; the compile time
            (`runtime.warm_up()`, before any timing) is recorded beside it
  memory    peak RSS (VmHWM) right after the speed runs: load + prefill + decode
  fidelity  every chunk of the text from an empty cache (llama-perplexity's method): PPL, and KL
            divergence / top-1 agreement against the float32 reference file (`kld.py`). The
            torch-f32 row writes that file from its own logits.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tinyllm.errors import TinyLLMError


@dataclass
class SpeedSettings:
    prompt_tokens: int
    decode_tokens: int
    warmup: int
    repeats: int


def summarize(samples: Sequence[float]) -> dict:
    """Median and spread of repeated measurements; the raw samples are kept for the JSON."""
    return {"median": float(np.median(samples)), "min": min(samples), "max": max(samples), "samples": list(samples)}


def time_speed(runtime, prompt: list[int], settings: SpeedSettings) -> tuple[dict, dict]:
    """(prefill tok/s, decode tok/s) summaries for `runtime` (the Runtime interface)."""
    prefill, decode = [], []
    for run in range(settings.warmup + settings.repeats):
        runtime.reset()
        start = time.perf_counter()
        logits = runtime.forward(prompt)
        prefill_s = time.perf_counter() - start
        token, decode_s = int(logits[-1].argmax()), 0.0
        for _ in range(settings.decode_tokens):
            start = time.perf_counter()
            logits = runtime.forward([token])
            decode_s += time.perf_counter() - start
            token = int(logits[-1].argmax())
        if run >= settings.warmup:
            prefill.append(len(prompt) / prefill_s)
            decode.append(settings.decode_tokens / decode_s)
    runtime.reset()
    return summarize(prefill), summarize(decode)


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """The process's peak resident memory (VmHWM), or None where /proc is missing.

    Not getrusage's ru_maxrss: a child started by fork + exec inherits the parent's peak there,
    so every row would report at least the bench process's own memory."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def measure_row(path: str, device: str, threads: int, chunks: list[list[int]], settings: SpeedSettings,
                reference: str, write_reference: bool, compile_step: bool = True) -> dict:
    """Everything the bench reports for one PyTorch/onnxruntime artifact (runs in the child)."""
    from tinyllm.bench.kld import Comparison, Reference, decode, encode
    from tinyllm.runtime import load_runtime

    rss_before = peak_rss_bytes()
    runtime = load_runtime(path, device=device, threads=threads, compile=compile_step)
    compiling = runtime.warm_up()
    n_ctx = len(chunks[0])
    first = n_ctx // 2
    prompt = [t for chunk in chunks for t in chunk][:settings.prompt_tokens]
    prefill, decode_tps = time_speed(runtime, prompt, settings)
    row = {"describe": runtime.describe(), "prefill_tps": prefill, "decode_tps": decode_tps,
           "compile": asdict(compiling) if compiling is not None else None,
           "peak_rss_bytes": peak_rss_bytes(), "rss_before_load_bytes": rss_before}
    if write_reference:
        n_vocab, stored = None, []
    else:
        _, n_vocab, tokens, stored = Reference(Path(reference)).read()
        if [list(t) for t in tokens] != [list(c) for c in chunks]:
            raise TinyLLMError(f"{reference}: holds other tokens than this text's; delete it and rerun")
    comparison = Comparison()
    for i, chunk in enumerate(chunks):
        logits = runtime.logits(chunk)[first:n_ctx - 1]
        if write_reference:
            n_vocab = logits.shape[1]
            stored.append(encode(logits))
        comparison.add(decode(stored[i], n_vocab), logits, np.asarray(chunk[first + 1:]))
    if write_reference:
        Reference.write(Path(reference), n_ctx, n_vocab, chunks, stored)
    row.update(comparison.figures())
    return row


def _child(conn, fn, args) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except TinyLLMError as e:
        conn.send(("error", str(e)))
    except BaseException as e:  # anything else is a bug: keep the traceback's last line and where
        where = traceback.extract_tb(e.__traceback__)[-1]
        conn.send(("error", f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"))
    finally:
        conn.close()


def in_child(fn, *args):
    """Run `fn(*args)` in a fresh spawned process; its result, or a TinyLLMError with its error."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child, fn, args), daemon=True)
    process.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:
        process.join()
        raise TinyLLMError(f"the measuring process died (exit status {process.exitcode}); out of memory?") from None
    finally:
        process.join()
    if status == "error":
        raise TinyLLMError(value)
    return value
