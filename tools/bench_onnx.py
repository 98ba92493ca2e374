"""Benchmark onnxruntime on an exported checkpoint: float32, INT8 and INT4, with and without the KV cache.

For each format the checkpoint is exported afresh (into a temporary directory, validated as
`tinyllm-export onnx` always does) and timed through the runtime interface at batch 1:

- prefill tokens/s: one forward over a P-token prompt from an empty cache;
- decode tokens/s with the cache: N−1 greedy steps of one token each over the growing cache;
- decode tokens/s without it: the same steps, each recomputing the whole sequence from nothing.

PyTorch float32 runs the same loops as the reference row. INT4 is timed at MatMulNBits
accuracy_level 4 (int8 compute, the exporter's CPU default) and 0 (float32 compute) to show why
level 4 was chosen. Greedy argmax, sampling excluded; `--warmup` untimed repeats, then the median
(min–max) of `--repeats`. Threads are fixed and the same for both engines.

    .venv/bin/python tools/bench_onnx.py --checkpoint runs/demo --json runs/bench_onnx.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from bench_common import (  # noqa: E402
    common_options, load_average, machine_info, machine_line, prompt_options, rates, set_threads, spread,
    summarize, table, write_json)
from export.onnx import export_onnx  # noqa: E402
from tinyllm.cli_support import Command  # noqa: E402
from tinyllm.errors import TinyLLMError  # noqa: E402
from tinyllm.runtime.base import Runtime  # noqa: E402
from tinyllm.runtime.onnx_runtime import OnnxRuntime  # noqa: E402
from tinyllm.runtime.torch_runtime import TorchRuntime  # noqa: E402

# (row label, --quant, MatMulNBits accuracy_level)
FORMATS = [("onnx float32", "none", 4), ("onnx int8", "int8", 4), ("onnx int4 (acc. level 4)", "int4", 4),
           ("onnx int4 (acc. level 0)", "int4", 0)]


def cached(runtime: Runtime, prompt: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds, new tokens) with the KV cache."""
    runtime.reset()
    start = time.perf_counter()
    token = int(runtime.forward(prompt)[-1].argmax())
    prefilled = time.perf_counter()
    out = [token]
    for _ in range(n_new - 1):
        token = int(runtime.forward([token])[-1].argmax())
        out.append(token)
    return prefilled - start, time.perf_counter() - prefilled, out


def uncached(runtime: Runtime, prompt: list[int], n_new: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds, new tokens), recomputing the whole sequence every token."""
    start = time.perf_counter()
    seq = list(prompt)
    seq.append(int(runtime.logits(seq)[-1].argmax()))
    prefilled = time.perf_counter()
    for _ in range(n_new - 1):
        seq.append(int(runtime.logits(seq)[-1].argmax()))
    return prefilled - start, time.perf_counter() - prefilled, seq[len(prompt):]


def measure(runtime: Runtime, prompt: list[int], n_new: int, warmup: int, repeats: int) -> dict:
    timings = {"prefill": [], "cached": [], "uncached": []}
    tokens = []
    for r in range(warmup + repeats):
        prefill_s, cached_s, out_cached = cached(runtime, prompt, n_new)
        _, uncached_s, out_uncached = uncached(runtime, prompt, n_new)
        tokens += [out_cached, out_uncached]
        if r >= warmup:
            timings["prefill"].append(prefill_s)
            timings["cached"].append(cached_s)
            timings["uncached"].append(uncached_s)
    steps = n_new - 1
    return {"prefill_tokens_per_s": rates(len(prompt), timings["prefill"]),
            "decode_cached_tokens_per_s": rates(steps, timings["cached"]),
            "decode_uncached_tokens_per_s": rates(steps, timings["uncached"]),
            "seconds": {k: summarize(v) for k, v in timings.items()},
            "tokens_identical": all(t == tokens[0] for t in tokens), "tokens": tokens[0]}


def model_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("model.onnx*"))


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Checkpoint directory to export and time.")
@prompt_options(new_tokens=128)
@common_options(warmup=1, repeats=3)
def main(checkpoint, prompt_tokens, new_tokens, seed, warmup, repeats, threads, json_path):
    """Prefill and decode tokens/s on onnxruntime (float32, INT8, INT4) beside PyTorch float32."""
    threads = set_threads(threads)
    if not (checkpoint / "model.safetensors").is_file():
        raise TinyLLMError(f"{checkpoint}: no checkpoint there; train one with `make demo` or pass --checkpoint")
    reference = TorchRuntime.load(checkpoint, threads=threads)
    if prompt_tokens + new_tokens > reference.n_ctx:
        raise TinyLLMError(f"prompt {prompt_tokens} + new {new_tokens} tokens exceed the context of "
                           f"{reference.n_ctx}; lower --prompt-tokens or --new-tokens")
    prompt = np.random.default_rng(seed).integers(0, reference.tokenizer.vocab_size, prompt_tokens).tolist()
    info = machine_info()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_onnx.") as tmp:
        click.echo(f"timing torch float32 ({threads} threads)…", err=True)
        results["torch float32"] = measure(reference, prompt, new_tokens, warmup, repeats)
        results["torch float32"]["model_bytes"] = (checkpoint / "model.safetensors").stat().st_size
        for label, quant, level in FORMATS:
            out = Path(tmp) / f"{quant}-{level}"
            click.echo(f"exporting and timing {label}…", err=True)
            export_onnx(checkpoint, out, quant, accuracy_level=level, log=lambda m: click.echo(m, err=True))
            results[label] = measure(OnnxRuntime.load(out, threads=threads), prompt, new_tokens, warmup, repeats)
            results[label]["model_bytes"] = model_bytes(out)

    load_end = load_average()
    c = reference.metadata
    click.echo("tinyllm onnxruntime speed: batch 1, greedy argmax, sampling excluded")
    click.echo(f"machine: {machine_line(info, load_end)}; onnxruntime {onnxruntime.__version__}, "
               f"{threads} intra-op threads")
    click.echo(f"model:   {checkpoint} ({c.get('preset', '?')} preset), n_ctx {reference.n_ctx}")
    click.echo(f"run:     prompt {prompt_tokens} random tokens, {new_tokens} new tokens (1 from the prefill + "
               f"{new_tokens - 1} decode steps); {warmup} warm-up, median (min–max) of {repeats}")
    click.echo("")
    headers = ["format", "file MB", "prefill tok/s", "decode tok/s, cache", "decode tok/s, no cache", "speed-up"]
    rows = []
    for label, r in results.items():
        speedup = r["decode_cached_tokens_per_s"]["median"] / r["decode_uncached_tokens_per_s"]["median"]
        rows.append([label, f"{r['model_bytes'] / 1e6:.1f}", spread(r["prefill_tokens_per_s"]),
                     spread(r["decode_cached_tokens_per_s"]), spread(r["decode_uncached_tokens_per_s"]),
                     f"{speedup:.1f}×"])
    click.echo(table(headers, rows))
    identical = {label: r["tokens_identical"] for label, r in results.items()}
    click.echo("\ncached and uncached greedy tokens identical in every repeat: "
               + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in identical.items()))
    write_json(json_path, {"benchmark": "onnx", "machine": info, "load_average_end_1_5_15": load_end,
                           "threads": threads, "onnxruntime": onnxruntime.__version__, "checkpoint": str(checkpoint),
                           "settings": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                                        "warmup": warmup, "repeats": repeats, "seed": seed},
                           "results": results})


if __name__ == "__main__":
    main()
