"""Decode speed of a finished bench run's files, timed in rounds, for ratios a shared machine cannot skew.

`tinyllm bench` times its rows one after another, each with its repeats. On a shared 2-vCPU VM
the machine's speed drifts by ±30% over the minutes between two rows, so a ratio of two rows in
one run says as much about the drift as about the formats (five runs on one AMD EPYC VM gave
onnx-int8 / gguf-q8_0 decode ratios from 0.53 to 1.12). Here every round times each row once,
back to back, so drift hits all rows of a round alike; each ratio asked for is taken per round
and its median (min–max) over the rounds reported.

Rows are read from the run's results.json (their artifact paths): PyTorch and onnxruntime rows
through the runtime interface, exactly as the bench times them (decode of N tokens fed one at a
time after a P-token prompt, forward passes only; the PyTorch rows eager), llama.cpp rows by
llama-bench (`-p 0 -n N -d P`). Each round's figure for a row is the median of `--repeats`;
`--warmup` untimed runs per row come first.

    .venv/bin/python tools/bench_rounds.py runs/demo/bench/results.json \\
        --formats onnx-f32,onnx-int8,gguf-q8_0 --ratio onnx-int8/onnx-f32 --ratio onnx-int8/gguf-q8_0
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import click
from tqdm import tqdm

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from bench_common import machine_info, spread, summarize, table, write_json  # noqa: E402
from tinyllm.bench.llama_rows import llama_bench  # noqa: E402
from tinyllm.bench.measure import SpeedSettings, time_speed  # noqa: E402
from tinyllm.cli_support import Command  # noqa: E402
from tinyllm.errors import TinyLLMError  # noqa: E402
from tinyllm.llama_cpp import find_llama_cpp  # noqa: E402
from tinyllm.runtime import load_runtime  # noqa: E402


def read_rows(results: Path, names: list[str]) -> dict[str, dict]:
    try:
        rows = {r["format"]: r for r in json.loads(results.read_text(encoding="utf-8"))["rows"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise TinyLLMError(f"{results}: not a tinyllm bench results.json ({e}); run `tinyllm bench` first") from None
    missing = [n for n in names if n not in rows or rows[n].get("error")]
    if missing:
        raise TinyLLMError(f"{results}: no measured row {', '.join(missing)}; bench them first "
                           f"(tinyllm bench … --formats {','.join(missing)})")
    return {n: rows[n] for n in names}


def parse_ratio(spec: str, names: list[str]) -> tuple[str, str]:
    top, sep, bottom = spec.partition("/")
    if not sep or top not in names or bottom not in names:
        raise TinyLLMError(f"--ratio {spec}: expected A/B with A and B among --formats ({', '.join(names)})")
    return top, bottom


@click.command(cls=Command)
@click.argument("results", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--formats", "formats_spec", required=True, help="Comma-separated rows of RESULTS to time.")
@click.option("--ratio", "ratio_specs", multiple=True, help="A/B: decode tok/s of row A over row B, per round.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True, help="Rounds of every row.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs of a row per round (their median is the round's figure).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed runs of each row before the first round.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads, every runtime.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=128, show_default=True, help="P.")
@click.option("--decode-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="N.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every round's figures, the settings and the machine to this file.")
def main(results, formats_spec, ratio_specs, rounds, repeats, warmup, threads, prompt_tokens, decode_tokens,
         json_path):
    """Decode tok/s of RESULTS' rows (a `tinyllm bench` results.json), in interleaved rounds, and
    the median per-round ratio of each --ratio."""
    names = [n.strip() for n in formats_spec.split(",") if n.strip()]
    rows = read_rows(results, names)
    ratios = [parse_ratio(spec, names) for spec in ratio_specs]
    llama_cpp = find_llama_cpp(None) if any(r["runtime"] == "llama.cpp" for r in rows.values()) else None
    settings = SpeedSettings(prompt_tokens, decode_tokens, 0, repeats)
    prompt = list(range(5, 5 + prompt_tokens))
    runtimes = {n: load_runtime(r["path"], threads=threads, compile=False) for n, r in rows.items()
                if r["runtime"] != "llama.cpp"}
    for runtime in runtimes.values() if warmup else ():
        time_speed(runtime, prompt, SpeedSettings(prompt_tokens, decode_tokens, 0, warmup))

    def decode_tps(name: str) -> float:
        if name in runtimes:
            return time_speed(runtimes[name], prompt, settings)[1]["median"]
        return llama_bench(llama_cpp, Path(rows[name]["path"]), settings, threads, 0)["decode_tps"]["median"]

    figures = {n: [] for n in names}
    for _ in tqdm(range(rounds), desc="rounds", unit="round", disable=None):
        for name in names:
            figures[name].append(decode_tps(name))
    per_round = {f"{a}/{b}": summarize([x / y for x, y in zip(figures[a], figures[b])]) for a, b in ratios}
    info = machine_info()
    click.echo(f"machine: {info['cpu_model']} ({info['isa']}; {info['cpus_usable']} usable CPUs); {threads} threads; "
               f"decode of {decode_tokens} tokens after {prompt_tokens}; {rounds} rounds × {repeats} repeats")
    click.echo(table(["row", "decode tok/s, median of rounds (min–max)"],
                     [[n, spread(summarize(v))] for n, v in figures.items()]))
    for (a, b), (spec, stats) in zip(ratios, per_round.items()):
        of_medians = statistics.median(figures[a]) / statistics.median(figures[b])
        click.echo(f"{spec}: {spread(stats, '{:.2f}')} (median per-round ratio; ratio of medians {of_medians:.2f})")
    write_json(json_path, {"results": str(results), "machine": info, "threads": threads, "rounds": rounds,
                           "repeats": repeats, "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
                           "decode_tps": figures, "ratios": per_round})


if __name__ == "__main__":
    main()
