"""`tinyllm-bench` (and `tinyllm bench`): compare every format of one checkpoint on one text."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from tinyllm.bench.formats import FORMATS, parse_formats
from tinyllm.cli_support import Command


@click.command("bench", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--formats", "formats_spec", default="all", show_default=True, metavar="LIST",
              help=f"Comma-separated formats and groups: all, core (all but the sizes sweep), sizes (llama.cpp + "
                   f"imatrix at Q2_K…Q6_K and tinyllm's files at those sizes); formats: {', '.join(FORMATS)}. "
                   "torch-f32, the reference, always runs.")
@click.option("--data", default="validation", show_default=True,
              help="'validation' (the checkpoint's own validation split) or a UTF-8 text file.")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=4), default=None,
              help="Perplexity chunk length n_ctx [the model's context].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for every runtime [the CPUs this process may use].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where artifacts (cached), results.json, report.md and plots go [CHECKPOINT/bench].")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, or cuda for torch/onnxruntime and llama.cpp -ngl 999.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=None,
              help="Prefill prompt length P [min(128, context/2)].")
@click.option("--decode-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens decoded one at a time after the prompt, N [min(64, context - P)].")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed runs first.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs; the median and min–max are reported.")
@click.option("--calib-tokens", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Calibration tokens (from the training split) for torch-int4-gptq and for llama-imatrix, "
                   "which gets the same tokens as text.")
@click.option("--compile/--no-compile", "compile_step", default=True, show_default=True,
              help="torch-* rows: decode on the compiled step (its compile time in the 'compile s' column) "
                   "or eagerly.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when a row breaks its bound or cannot be measured.")
@click.option("--llama-cpp", "llama_cpp_dir", type=click.Path(path_type=Path), default=None,
              help="Directory with llama.cpp's binaries [$TINYLLM_LLAMA_CPP, the tinyllm cache, PATH].")
def main(checkpoint, formats_spec, data, n_ctx, threads, out, device, prompt_tokens, decode_tokens, warmup, repeats,
         calib_tokens, compile_step, strict, llama_cpp_dir):
    """Measure CHECKPOINT (a float32 checkpoint directory) in every format on the same text.

    Makes the artifacts it needs (cached in OUT/artifacts by content), then reports per format:
    size and bits per weight; perplexity by llama-perplexity's method; ΔPPL, KL divergence and
    top-1 agreement against torch-f32; prefill and decode tokens/s at batch 1; peak memory. Writes
    OUT/results.json, OUT/report.md and plots, and flags any row that breaks its format's bound.

    \b
    Examples:
      tinyllm-bench runs/demo
      tinyllm-bench runs/demo --formats torch-int4-gptq,gguf-q4_0,gguf-q4_0-llama-quantize
    """
    from tinyllm.bench.report import terminal_table, write_outputs
    from tinyllm.bench.runner import run_bench

    formats = parse_formats(formats_spec)
    out = out or checkpoint / "bench"
    command = "tinyllm-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = run_bench(checkpoint, formats, out, data, n_ctx, threads, device, prompt_tokens, decode_tokens,
                        warmup, repeats, llama_cpp_dir, calib_tokens, log=lambda line: click.echo(line, err=True),
                        command=command, compile_step=compile_step)
    paths = write_outputs(results, out)
    click.echo(terminal_table(results))
    click.echo(f"report: {paths['report']}  (results: {paths['results']})")
    broken = [row["format"] for row in results["rows"] if row.get("flags") or row.get("error")]
    if results["parity"] and not results["parity"]["ok"]:
        broken.append("parity")
    if broken:
        click.echo(f"{len(broken)} problem(s): {', '.join(broken)} (see the flags above)", err=True)
        if strict:
            raise SystemExit(1)
