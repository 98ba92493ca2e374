"""A whole answer with and without the compiled decode step, compile time included: the
measurement behind `tinyllm generate`/`chat`'s default (`--compile` or `--no-compile`).

For each checkpoint, each run in a fresh process (a compiled step outlives its process only in
the on-disk cache), on one cache directory that starts empty:

  eager   load, prefill the prompt, decode N tokens greedily, no compiling
  cold    the same with the decode step compiled from nothing (the cache empty; the native
          kernel's C++ operators, cached apart in ~/.cache/tinyllm/kernels, are not rebuilt)
  warm    the same again, on the cache the cold run filled: what every later start pays

Per run: the compile (or cache load) time, prefill ms, decode tok/s of that first answer and
the median of `--repeats` more, and the answer's time as a user waits for it: compile + prefill
+ decode (loading the checkpoint costs every mode the same and is left out). Sampling is
excluded as in the bench (greedy argmax on the returned logits).

    flock /tmp/tinyllm-timing.lock .venv/bin/python tools/bench_compile.py runs/demo runs/demo-int4 \\
        --threads 2 --json runs/bench_compile.json
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

# Run as a script from a checkout, installed or not: the sibling helper and the tinyllm package
# next to tools/ must import however it is launched.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from bench_common import CpuShare, machine_info, machine_line, share_lines, table, write_json  # noqa: E402
from tinyllm.bench.measure import SpeedSettings, in_child, time_speed  # noqa: E402
from tinyllm.cli_support import Command  # noqa: E402

MODES = ("eager", "cold", "warm")
PROMPT = "Once upon a time, in a small town by the sea,"


def one_answer(path: str, mode: str, threads: int, new_tokens: int, repeats: int) -> dict:
    """In the child: load, compile unless eager, then the first answer and `repeats` more."""
    import time

    from tinyllm.runtime import load_runtime

    runtime = load_runtime(path, threads=threads, compile=mode != "eager")
    start = time.perf_counter()
    info = runtime.warm_up()
    compile_s = time.perf_counter() - start if mode != "eager" else 0.0
    if mode != "eager" and not info.compiled:
        raise RuntimeError(f"the decode step did not compile: {info.reason}")
    prompt = runtime.tokenizer.encode(PROMPT)
    first_prefill, first_decode = time_speed(runtime, prompt, SpeedSettings(len(prompt), new_tokens, 0, 1))
    _, steady = time_speed(runtime, prompt, SpeedSettings(len(prompt), new_tokens, 0, repeats))
    prefill_s = len(prompt) / first_prefill["median"]
    decode_s = new_tokens / first_decode["median"]
    return {"mode": mode, "compile_s": compile_s, "cached": info.cached if mode != "eager" else None,
            "prompt_tokens": len(prompt), "prefill_ms": 1e3 * prefill_s,
            "first_decode_tps": first_decode["median"], "decode_tps": steady,
            "answer_s": compile_s + prefill_s + decode_s, "describe": runtime.describe()}


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--new-tokens", "-n", type=click.IntRange(min=1), default=200, show_default=True,
              help="N: tokens in the answer (a typical reply).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="More answers after the first, for the steady decode rate (median).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every figure and the machine info to this file.")
def main(checkpoints, new_tokens, threads, repeats, json_path):
    """Answer time (compile + prefill + decode) of eager and compiled decoding, cold and warm."""
    info = machine_info()
    share = CpuShare()
    results = []
    with tempfile.TemporaryDirectory(prefix="tinyllm-bench-compile-") as cache:
        # The children inherit it: a fresh, empty cache that the cold run fills and the warm run reads.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        for path in checkpoints:
            for mode in MODES:
                click.echo(f"{path}: {mode} ...", err=True)
                results.append({"checkpoint": path, **in_child(one_answer, path, mode, threads, new_tokens, repeats)})
    share = share.stop()

    click.echo(f"tinyllm: a {new_tokens}-token answer, eager against compiled decoding (compile time included)")
    click.echo(f"machine: {machine_line(info)}")
    for line in share_lines(share, info["cpus_usable"]):
        click.echo(line)
    click.echo(f"run:     {threads} threads, greedy, prompt {PROMPT!r}; each mode in a fresh process; "
               f"decode tok/s of the first answer and the median of {repeats} more")
    click.echo("")
    headers = ["checkpoint", "mode", "compile s", "prefill ms", "decode tok/s (1st)", "decode tok/s", "answer s"]
    rows = [[r["checkpoint"], r["mode"], f"{r['compile_s']:.1f}", f"{r['prefill_ms']:.1f}",
             f"{r['first_decode_tps']:,.0f}", f"{r['decode_tps']['median']:,.0f}", f"{r['answer_s']:.2f}"]
            for r in results]
    click.echo(table(headers, rows))
    click.echo("")
    for path in checkpoints:
        by_mode = {r["mode"]: r for r in results if r["checkpoint"] == path}
        faster = "compiled" if by_mode["warm"]["answer_s"] < by_mode["eager"]["answer_s"] else "eager"
        tokens_to_pay = by_mode["warm"]["compile_s"] / max(
            1e-9, 1 / by_mode["eager"]["decode_tps"]["median"] - 1 / by_mode["warm"]["decode_tps"]["median"])
        click.echo(f"{path}: faster {new_tokens}-token answer on a warm cache: {faster}; compiling pays after "
                   + (f"~{tokens_to_pay:,.0f} tokens (warm)" if tokens_to_pay > 0 else "never (no faster decode)"))
    write_json(json_path, {"benchmark": "compile", "machine": info, "cpu_share": share, "threads": threads,
                           "new_tokens": new_tokens, "repeats": repeats, "prompt": PROMPT, "results": results})


if __name__ == "__main__":
    main()
