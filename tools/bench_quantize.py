"""Quantized checkpoints against float32: size, quantization time, validation perplexity, decode speed.

For each `--checkpoint` (a trained float32 directory, e.g. runs/demo) this writes int8 (RTN),
int4 (RTN) and int4 (GPTQ, calibrated on the training split) checkpoints with `tinyllm-quantize`'s
library function, then measures every variant the same way:

  size        model.safetensors bytes
  quant time  wall seconds of the quantization itself (not loading or writing)
  PPL         validation perplexity by llama-perplexity's method (tinyllm.evaluate), n_ctx = the
              model's context; ΔPPL relative to float32
  decode      batch-1 tokens/s: a 16-token prompt prefilled, then N tokens fed one at a time with
              the KV cache (argmax, sampling excluded), after a warm-up; median (min–max) of repeats

With llama.cpp's tools installed (`tools/install_llama_cpp.py`) and the GGUF exporter present, it
adds llama.cpp's own reference: the float32 GGUF and `llama-quantize … Q4_0` of it, perplexity by
`llama-perplexity` on the same text, so calibrated int4's ΔPPL can be set against Q4_0's.

    .venv/bin/python tools/bench_quantize.py --checkpoint runs/demo --threads 2 --json runs/bench_quantize.json
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_common import (busy_note, common_options, load_average, machine_info, machine_line,  # noqa: E402
                                rates, set_threads, spread, table, write_json)
from quantize.quantizer import quantize_checkpoint  # noqa: E402
from tinyllm.checkpoint import WEIGHTS_FILE  # noqa: E402
from tinyllm.dataset import DataSpec, load_splits  # noqa: E402
from tinyllm.evaluate import plain_text  # noqa: E402
from tinyllm.runtime import Runtime, load_runtime  # noqa: E402

VARIANTS = (("int8", "int8", False, "rtn"), ("int4-rtn", "int4", False, "rtn"), ("int4-gptq", "int4", False, "gptq"))
PROMPT = 16


def decode_seconds(runtime: Runtime, n_tokens: int) -> float:
    """Seconds for `n_tokens` single-token forward passes after a 16-token prefill."""
    runtime.reset()
    logits = runtime.forward(list(range(3, 3 + PROMPT)))
    token = int(logits[-1].argmax())
    start = time.perf_counter()
    for _ in range(n_tokens):
        token = int(runtime.forward([token])[-1].argmax())
    return time.perf_counter() - start


def measure(path: Path, text: str, n_tokens: int, warmup: int, repeats: int) -> dict:
    runtime = load_runtime(path)
    n_ctx = runtime.n_ctx
    ppl = runtime.perplexity(text, n_ctx).ppl
    for _ in range(warmup):
        decode_seconds(runtime, n_tokens)
    seconds = [decode_seconds(runtime, n_tokens) for _ in range(repeats)]
    return {"ppl": ppl, "decode": rates(n_tokens, seconds), "describe": runtime.describe(),
            "size": (path / WEIGHTS_FILE).stat().st_size}


def llama_cpp_reference(checkpoint: Path, work: Path, text: str, n_ctx: int) -> list[dict]:
    """The float32 GGUF and llama-quantize's Q4_0 of it, scored by llama-perplexity; [] without the tools."""
    try:
        from export.gguf import export_gguf
        from tinyllm.llama_cpp import locate
    except ImportError:
        return []
    found = locate()
    if found is None or found.find("llama-quantize") is None or found.find("llama-perplexity") is None:
        return []
    f32, q4 = work / "f32.gguf", work / "q4_0.gguf"
    export_gguf(checkpoint, f32, "f32", log=lambda _: None, progress=False)
    start = time.perf_counter()
    subprocess.run([str(found.tool("llama-quantize")), str(f32), str(q4), "Q4_0"], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    rows = []
    for name, path, quant_time in (("llama.cpp f32", f32, None), ("llama.cpp Q4_0 (llama-quantize)", q4, seconds)):
        runtime = load_runtime(path)
        rows.append({"name": name, "size": path.stat().st_size, "quant_seconds": quant_time,
                     "ppl": runtime.perplexity(text, n_ctx).ppl})
    return rows


def bench_checkpoint(checkpoint: Path, work: Path, n_tokens: int, warmup: int, repeats: int,
                     calib_tokens: int) -> dict:
    float_run = load_runtime(checkpoint)
    _, val_docs = load_splits(DataSpec.from_dict(float_run.metadata["data"]))
    text = plain_text(val_docs)
    rows = [{"name": "float32", "quant_seconds": None, **measure(checkpoint, text, n_tokens, warmup, repeats)}]
    for name, scheme, asym, method in VARIANTS:
        out = work / name
        click.echo(f"  {name}: quantizing", err=True)
        report = quantize_checkpoint(checkpoint, out, scheme, asym, method=method, calib_tokens=calib_tokens,
                                     force=True)
        rows.append({"name": name, "quant_seconds": report["seconds"],
                     **measure(out, text, n_tokens, warmup, repeats)})
    reference = llama_cpp_reference(checkpoint, work, text, float_run.n_ctx)
    return {"checkpoint": str(checkpoint), "n_ctx": float_run.n_ctx, "rows": rows, "llama_cpp": reference}


def render(result: dict, threads: int) -> str:
    base = result["rows"][0]["ppl"]
    lines = []
    for row in result["rows"]:
        lines.append([row["name"], f"{row['size'] / 2**20:.2f}",
                      "—" if row["quant_seconds"] is None else f"{row['quant_seconds']:.1f}",
                      f"{row['ppl']:.4f}", "—" if row is result["rows"][0] else f"{100 * (row['ppl'] / base - 1):+.2f}%",
                      spread(row["decode"], "{:,.0f}")])
    if result["llama_cpp"]:
        ref = result["llama_cpp"][0]["ppl"]
        for row in result["llama_cpp"]:
            lines.append([row["name"], f"{row['size'] / 2**20:.2f}",
                          "—" if row["quant_seconds"] is None else f"{row['quant_seconds']:.1f}",
                          f"{row['ppl']:.4f}", "—" if row is result["llama_cpp"][0] else
                          f"{100 * (row['ppl'] / ref - 1):+.2f}% (vs llama.cpp f32)", "(not timed here)"])
    headers = ["variant", "MiB", "quant s", "val PPL", "ΔPPL", f"decode tok/s ({threads} thr)"]
    return f"{result['checkpoint']} (n_ctx {result['n_ctx']})\n" + table(headers, lines)


@click.command()
@click.option("--checkpoint", "checkpoints", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A trained float32 checkpoint directory (repeatable: demo, small…).")
@click.option("--tokens", "n_tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Decode steps timed per repeat.")
@click.option("--calib-tokens", type=click.IntRange(min=1), default=16384, show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the quantized checkpoints go [a temporary directory].")
@common_options(warmup=1, repeats=5)
def main(checkpoints, n_tokens, calib_tokens, work, warmup, repeats, threads, json_path):
    """Quantized variants of each CHECKPOINT against float32 (see the module docstring)."""
    threads = set_threads(threads)
    info = machine_info()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_quantize.") as tmp:
        for checkpoint in checkpoints:
            click.echo(f"benchmarking {checkpoint}", err=True)
            target = (work or Path(tmp)) / checkpoint.name
            target.mkdir(parents=True, exist_ok=True)
            results.append(bench_checkpoint(checkpoint, target, n_tokens, warmup, repeats, calib_tokens))
    load_end = load_average()
    click.echo(machine_line(info, load_end))
    for result in results:
        click.echo(render(result, threads))
        click.echo("kernels: " + "; ".join(f"{r['name']}: {r['describe']}" for r in result["rows"]))
    note = busy_note(info, load_end, threads)
    if note:
        click.echo(note)
    write_json(json_path, {"machine": info, "threads": threads, "decode_tokens": n_tokens, "repeats": repeats,
                           "results": results})


if __name__ == "__main__":
    main()
