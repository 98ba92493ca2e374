"""Helpers shared by the benchmark scripts under tools/.

Summary statistics over repeated timings, the machine description written next to every figure,
thread control, a plain-text table and the `--json` dump. Nothing here times anything itself.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Callable, Sequence

import click
import torch

from tinyllm.bench.machine import load_average, machine_info  # noqa: F401 - the scripts import them from here
from tinyllm.bench.measure import summarize


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds one call of `fn` took, and what it returned."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def rates(amount: float, seconds: Sequence[float]) -> dict:
    """Summarize `amount / t` per sample rather than `amount / median(t)`: with an even number
    of repeats the two differ, and the table should show the median of what it lists."""
    return summarize([amount / s for s in seconds])


def spread(stats: dict, fmt: str = "{:,.0f}") -> str:
    """'median (min–max)' for a table cell."""
    return f"{fmt.format(stats['median'])} ({fmt.format(stats['min'])}–{fmt.format(stats['max'])})"


def set_threads(threads: int | None) -> int:
    """Apply --threads (None keeps torch's default) and return the count torch will use."""
    if threads is not None:
        if threads <= 0:
            raise click.BadParameter(f"must be positive, got {threads}", param_hint="--threads")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_line(info: dict) -> str:
    return (f"{info['cpu_model']} ({info['isa']}; {info['cpus_usable']} usable of {info['cpu_count']} CPUs); "
            f"torch {info['torch']}, {info['torch_threads']} threads; python {info['python']}")


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, CPU-seconds the whole machine was busy, CPU-seconds of this process), or None
    where /proc/stat is missing (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: steal counts as busy, since on a VM it is
    # time a neighbour took from us.
    busy = sum(fields[:3]) + sum(fields[5:8])
    own = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


class CpuShare:
    """How much CPU other processes used while the benchmark ran.

    The load average lags by minutes and counts our own threads, so instead compare the machine's
    busy time (/proc/stat) with this process's own CPU time (all its threads) over the same span.
    """

    def __init__(self):
        self._start = _cpu_snapshot()

    def stop(self) -> dict | None:
        end = _cpu_snapshot()
        if self._start is None or end is None:
            return None
        wall, busy, own = (b - a for a, b in zip(self._start, end))
        others = max(0.0, busy - own)
        return {"wall_s": wall, "machine_busy_cpu_s": busy, "own_cpu_s": own, "other_cpu_s": others,
                "other_cpus_avg": others / wall if wall > 0 else 0.0}


def share_lines(share: dict | None, cpus: int) -> list[str]:
    """The header line about other work, and a warning when it was enough to skew the figures."""
    if share is None:
        return []
    lines = [f"others:  other processes used {share['other_cpus_avg']:.2f} of {cpus} CPUs on average "
             f"during the {share['wall_s']:.1f} s run (this one: {share['own_cpu_s'] / share['wall_s']:.2f})"]
    if share["other_cpus_avg"] > 0.2:
        lines.append("note: other work shared the machine, so these figures are likely pessimistic and their "
                     "spread wide; rerun on a quiet machine to compare")
    return lines


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table: the first column left-aligned, the figures right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {path}")


def common_options(warmup: int, repeats: int):
    """--warmup, --repeats, --threads and --json, with per-script defaults."""
    def decorate(fn):
        for option in reversed([
            click.option("--warmup", type=click.IntRange(min=0), default=warmup, show_default=True,
                         help="Untimed runs first (allocator, thread pool and caches settle)."),
            click.option("--repeats", type=click.IntRange(min=1), default=repeats, show_default=True,
                         help="Timed runs; the median and min–max are reported."),
            click.option("--threads", type=int, default=None,
                         help="torch intra-op threads [torch's default]."),
            click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Also write every figure, the settings and the machine info to this file."),
        ]):
            fn = option(fn)
        return fn
    return decorate


def prompt_options(new_tokens: int):
    """--prompt-tokens, --new-tokens and --seed for the decode benchmarks, with a per-script N."""
    def decorate(fn):
        for option in reversed([
            click.option("--prompt-tokens", type=click.IntRange(min=1), default=32, show_default=True,
                         help="P: prompt length in tokens (random ids)."),
            click.option("--new-tokens", type=click.IntRange(min=2), default=new_tokens, show_default=True,
                         help="N: tokens to generate; the first comes from the prefill, N−1 from decode steps."),
            click.option("--seed", type=int, default=0, show_default=True,
                         help="Seed of the random prompt (and of a random-init model's weights)."),
        ]):
            fn = option(fn)
        return fn
    return decorate
