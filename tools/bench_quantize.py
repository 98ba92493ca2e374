"""Quantized checkpoints against float32: size, quantization time, validation perplexity, decode speed.

For each `--checkpoint` (a trained float32 directory, e.g. runs/demo) this writes int8 (RTN),
int4 (RTN) and int4 (GPTQ, calibrated on the training split) checkpoints with `tinyllm-quantize`'s
library function, then measures every variant the same way:

  size        model.safetensors bytes
  quant time  wall seconds of the quantization itself (not loading or writing)
  PPL         validation perplexity by llama-perplexity's method (tinyllm.evaluate), n_ctx = the
              model's context; ΔPPL relative to float32
  decode      batch-1 tokens/s: a 16-token prompt prefilled, then N tokens fed one at a time with
              the KV cache (argmax, sampling excluded); `--warmup` untimed rounds, then the
              median (min–max) of `--repeats`. Each round times every variant back to back, so a
              busy neighbour on a shared machine slows them alike.

With llama.cpp's tools installed (`tinyllm llama-cpp install`) and the GGUF exporter present, it
adds llama.cpp's own reference: the float32 GGUF and `llama-quantize … Q4_0` of it, perplexity by
`llama-perplexity` on the same text (so calibrated int4's ΔPPL can be set against Q4_0's) and
decode speed by `llama-bench` (-p 0 -n N -d 16, same threads).

    .venv/bin/python tools/bench_quantize.py --checkpoint runs/demo --threads 2 --json runs/bench_quantize.json
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

# Run as a script from a checkout, installed or not: the sibling helper and the tinyllm package
# next to tools/ must import however it is launched.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from bench_common import (CpuShare, common_options, machine_info, machine_line, rates,  # noqa: E402
                          set_threads, share_lines, spread, table, write_json)
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


def measure(rows: list[dict], text: str, n_ctx: int, n_tokens: int, warmup: int, repeats: int) -> None:
    """Fill in each row's PPL, decode speed and kernel description (rows name their `path`)."""
    runtimes = [load_runtime(row["path"]) for row in rows]
    for row, runtime in zip(rows, runtimes):
        click.echo(f"  {row['name']}: perplexity", err=True)
        row.update(ppl=runtime.perplexity(text, n_ctx).ppl, describe=runtime.describe(),
                   size=(Path(row["path"]) / WEIGHTS_FILE).stat().st_size)
    seconds = [[] for _ in rows]
    for r in range(warmup + repeats):
        for times, runtime in zip(seconds, runtimes):
            elapsed = decode_seconds(runtime, n_tokens)
            if r >= warmup:
                times.append(elapsed)
    for row, times in zip(rows, seconds):
        row["decode"] = rates(n_tokens, times)


def llama_cpp_reference(checkpoint: Path, work: Path, text: str, n_ctx: int, n_tokens: int, repeats: int,
                        threads: int) -> list[dict]:
    """The float32 GGUF and llama-quantize's Q4_0 of it: PPL by llama-perplexity, decode by
    llama-bench; [] without the tools."""
    try:
        from export.gguf import export_gguf
        from tinyllm.bench.llama_rows import llama_bench
        from tinyllm.bench.measure import SpeedSettings
        from tinyllm.llama_cpp import locate
    except ImportError:
        return []
    found = locate()
    if found is None or any(found.find(t) is None for t in ("llama-quantize", "llama-perplexity", "llama-bench")):
        return []
    f32, q4 = work / "f32.gguf", work / "q4_0.gguf"
    export_gguf(checkpoint, f32, "f32", log=lambda _: None, progress=False)
    start = time.perf_counter()
    subprocess.run([str(found.tool("llama-quantize")), str(f32), str(q4), "Q4_0"], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    speed = SpeedSettings(prompt_tokens=PROMPT, decode_tokens=n_tokens, warmup=1, repeats=repeats)
    rows = []
    for name, path, quant_time in (("llama.cpp f32", f32, None), ("llama.cpp Q4_0 (llama-quantize)", q4, seconds)):
        click.echo(f"  {name}: perplexity, llama-bench", err=True)
        rows.append({"name": name, "size": path.stat().st_size, "quant_seconds": quant_time,
                     "ppl": load_runtime(path).perplexity(text, n_ctx).ppl,
                     "decode": llama_bench(found, path, speed, threads, 0)["decode_tps"]})
    return rows


def bench_checkpoint(checkpoint: Path, work: Path, n_tokens: int, warmup: int, repeats: int,
                     calib_tokens: int, threads: int) -> dict:
    float_run = load_runtime(checkpoint)
    _, val_docs = load_splits(DataSpec.from_dict(float_run.metadata["data"]))
    text = plain_text(val_docs)
    rows = [{"name": "float32", "path": str(checkpoint), "quant_seconds": None}]
    for name, scheme, asym, method in VARIANTS:
        out = work / name
        click.echo(f"  {name}: quantizing", err=True)
        report = quantize_checkpoint(checkpoint, out, scheme, asym, method=method, calib_tokens=calib_tokens,
                                     force=True)
        rows.append({"name": name, "path": str(out), "quant_seconds": report["seconds"]})
    measure(rows, text, float_run.n_ctx, n_tokens, warmup, repeats)
    reference = llama_cpp_reference(checkpoint, work, text, float_run.n_ctx, n_tokens, repeats, threads)
    return {"checkpoint": str(checkpoint), "n_ctx": float_run.n_ctx, "params": float_run.model.config.num_params(),
            "rows": rows, "llama_cpp": reference}


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
                          f"{100 * (row['ppl'] / ref - 1):+.2f}% (vs llama.cpp f32)",
                          spread(row["decode"], "{:,.0f}") + " (llama-bench)"])
    headers = ["variant", "MiB", "quant s", "val PPL", "ΔPPL", f"decode tok/s ({threads} thr)"]
    return (f"{result['checkpoint']} ({result['params'] / 1e6:.1f}M params, n_ctx {result['n_ctx']})\n"
            + table(headers, lines))


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
    share = CpuShare()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_quantize.") as tmp:
        for checkpoint in checkpoints:
            click.echo(f"benchmarking {checkpoint}", err=True)
            target = (work or Path(tmp)) / checkpoint.name
            target.mkdir(parents=True, exist_ok=True)
            results.append(bench_checkpoint(checkpoint, target, n_tokens, warmup, repeats, calib_tokens, threads))
    share = share.stop()
    click.echo(f"machine: {machine_line(info)}")
    for line in share_lines(share, info["cpus_usable"]):
        click.echo(line)
    click.echo(f"run:     batch 1, greedy argmax, float32 activations; prompt {PROMPT} tokens, {n_tokens} decode "
               f"steps; {warmup} warm-up, median (min–max) of {repeats}; variants alternate")
    for result in results:
        click.echo("")
        click.echo(render(result, threads))
        click.echo("kernels: " + "; ".join(f"{r['name']}: {r['describe']}" for r in result["rows"]))
    write_json(json_path, {"benchmark": "quantize", "machine": info, "cpu_share": share, "threads": threads,
                           "decode_tokens": n_tokens, "warmup": warmup, "repeats": repeats, "results": results})


if __name__ == "__main__":
    main()
