"""Presenting a `tinyllm-bench` results dict: a terminal table, report.md, three plots, results.json.

This module only reads the results dict (its schema is the contract with the measuring side) and
never measures anything, so it can be tested on a synthetic dict and rerun on a saved results.json.
Any figure may be null; it prints as "—" and is left out of the plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tinyllm.bench.frontier import goal_line, llama_cpp_rows, pareto_front, tinyllm_files, tinyllm_rows
from tinyllm.fileio import atomic_write, atomic_write_text

DASH = "—"
PLOT_FILES = {"ppl_vs_bpw": "ppl_vs_bpw.png", "kld_vs_bpw": "kld_vs_bpw.png", "speed": "speed.png"}
RUNTIME_STYLE = {  # runtime -> (marker, colour); fixed so the plots and reruns agree
    "torch": ("o", "tab:blue"),
    "onnxruntime": ("s", "tab:orange"),
    "llama.cpp": ("^", "tab:green"),
}
_OTHER_STYLE = ("D", "tab:gray")

COLUMNS = ("format", "runtime", "MiB", "bits/w", "PPL", "ΔPPL %", "KLD", "top-1 %",
           "prefill tok/s", "decode tok/s", "compile s", "RSS MiB", "build s", "status")
_LEFT = {"format", "runtime"}  # names read better left-aligned, figures right-aligned


# ---- formatting of single figures -------------------------------------------------------------

def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return format(value, spec)


def _mib(n_bytes) -> str:
    return DASH if n_bytes is None else f"{n_bytes / 2**20:.2f}"


def _kld(value) -> str:
    if value == 0:
        return "0"  # torch-f32 against itself: exact zero reads better than 0.00e+00
    return _fmt(value, ".2e")


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _tps(stat) -> str:
    if not stat or stat.get("median") is None:
        return DASH
    if stat.get("min") is None or stat.get("max") is None:
        return _rate(stat["median"])
    return f"{_rate(stat['median'])} ({_rate(stat['min'])}–{_rate(stat['max'])})"


def _build(row: dict) -> str:
    text = _fmt(row.get("build_seconds"), ".1f")
    # A reused artifact's build time is not this run's; the star is explained under the table.
    return text + "*" if row.get("cached") else text


def _compile(row: dict) -> str:
    """The decode step's compile time, cold (compiled here) or warm (loaded from the cache)."""
    c = row.get("compile") or {}
    if not c.get("compiled"):
        return DASH
    return f"{_fmt(c.get('seconds'), '.1f')} {'warm' if c.get('cached') else 'cold'}"


def status(row: dict) -> str:
    if row.get("error"):
        return "error"
    if row.get("flags") or (row.get("bound") or {}).get("ok") is False:
        return "FLAG"
    return "ok"


def _cells(row: dict) -> list[str]:
    top1 = row.get("top1_agreement")
    return [
        str(row.get("format", "?")), str(row.get("runtime", "?")),
        _mib(row.get("size_bytes")), _fmt(row.get("bits_per_weight"), ".2f"),
        _fmt(row.get("ppl"), ".4f"), _fmt(row.get("delta_ppl_pct"), "+.3f"),
        _kld(row.get("kld_mean")), _fmt(None if top1 is None else 100 * top1, ".2f"),
        _tps(row.get("prefill_tps")), _tps(row.get("decode_tps")), _compile(row),
        _fmt(None if row.get("peak_rss_bytes") is None else row["peak_rss_bytes"] / 2**20, ".0f"),
        _build(row), status(row),
    ]


# ---- the lines under the table, shared by the terminal and report.md --------------------------

def machine_line(results: dict) -> str:
    m = results.get("machine") or {}
    isa = f" ({m['isa']})" if m.get("isa") else ""
    return (f"machine: {m.get('cpu_model') or 'unknown CPU'}{isa}, {m.get('cpus_usable', '?')} usable CPUs"
            f" of {m.get('cpu_count', '?')}, {results.get('threads', '?')} threads"
            f", device {results.get('device', '?')}")


def text_line(results: dict) -> str:
    d = results.get("data") or {}
    return (f"text: {d.get('source', '?')}: {d.get('tokens', '?')} tokens, n_ctx {d.get('n_ctx', '?')}"
            f", {d.get('chunks', '?')} chunks, {d.get('scored_tokens', '?')} scored tokens")


def speed_line(results: dict) -> str:
    s = results.get("speed") or {}
    line = (f"speed: batch 1, {s.get('prompt_tokens', '?')}-token prompt (prefill), "
            f"{s.get('decode_tokens', '?')} decoded tokens, {s.get('warmup', '?')} warm-up + "
            f"{s.get('repeats', '?')} repeats, median (min–max)")
    if s.get("llama_bench_flags"):
        line += "; llama-bench " + " ".join(map(str, s["llama_bench_flags"]))
    return line


def parity_line(results: dict) -> str:
    p = results.get("parity")
    if not p:
        return "parity: not measured"
    verdict = "PASS" if p.get("ok") else "FAIL"
    return (f"parity: {', '.join(p.get('formats') or [])}: max relative PPL difference "
            f"{_fmt(p.get('max_rel_diff_pct'), '.4f')}% (bound {_fmt(p.get('bound_pct'), 'g')}%) {verdict}")


def server_line(results: dict) -> str | None:
    s = results.get("server_check")
    if not s:
        return None
    return (f"llama-server check ({s.get('format', '?')}): decode {_fmt(s.get('server_decode_tps'), '.1f')} "
            f"tok/s through the server vs {_fmt(s.get('llama_bench_decode_tps'), '.1f')} tok/s in "
            f"llama-bench (ratio {_fmt(s.get('ratio'), '.2f')}), prompt "
            f"{_fmt(s.get('server_prompt_tps'), '.1f')} tok/s")


def problem_lines(results: dict) -> list[str]:
    """Every error, flag and note, in full: the table only has room for one word."""
    lines = []
    for row in results.get("rows", []):
        name = row.get("format", "?")
        if row.get("error"):
            lines.append(f"error {name}: {row['error']}")
        for flag in row.get("flags") or []:
            lines.append(f"FLAG {name}: {flag}")
        bound = row.get("bound") or {}
        if bound.get("ok") is False and not row.get("flags"):
            lines.append(f"FLAG {name}: bound broken: {bound.get('text', '?')}")
        for note in row.get("notes") or []:
            lines.append(f"note {name}: {note}")
    return lines


def _footnote(results: dict) -> str | None:
    if any(r.get("cached") for r in results.get("rows", [])):
        return "build s*: artifact reused from an earlier run; the time is from when it was built"
    return None


# ---- terminal ---------------------------------------------------------------------------------

def terminal_table(results: dict) -> str:
    rows = [_cells(r) for r in results.get("rows", [])]
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *rows)]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) if name in _LEFT else c.rjust(w)
                         for name, c, w in zip(COLUMNS, cells, widths))

    out = [line(COLUMNS), "  ".join("-" * w for w in widths)] + [line(r) for r in rows] + [""]
    out += [machine_line(results), text_line(results), speed_line(results), parity_line(results)]
    out += [x for x in (goal_line(results), server_line(results), _footnote(results)) if x]
    out += problem_lines(results)
    return "\n".join(out) + "\n"


# ---- report.md --------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _method(results: dict) -> str:
    d, s = results.get("data") or {}, results.get("speed") or {}
    flags = " ".join(map(str, s.get("llama_bench_flags") or [])) or "(none recorded)"
    return (
        "Perplexity follows llama.cpp's `llama-perplexity`: the text is tokenized once without BOS, "
        f"cut into chunks of n_ctx = {d.get('n_ctx', '?')} tokens (the tail that does not fill a chunk "
        "is dropped), each chunk is run from an empty cache and only the second half of each chunk is "
        "scored. KL divergence (mean KL(torch-f32 ‖ format), nats per token) and top-1 agreement "
        "(share of tokens whose argmax matches) are taken against torch-f32 on the same scored tokens. "
        f"Speed is measured at batch 1 with the same thread count ({results.get('threads', '?')}) for "
        f"every runtime: prefill of a {s.get('prompt_tokens', '?')}-token prompt and decoding of "
        f"{s.get('decode_tokens', '?')} tokens, {s.get('warmup', '?')} warm-up run(s), then the median "
        f"(min–max) of {s.get('repeats', '?')} repeats; peak RSS is that of the process that ran the "
        "speed test. llama.cpp rows are measured by llama.cpp's own tools: perplexity by "
        f"`llama-perplexity`, speed by `llama-bench {flags}`. Bits per weight is 8 × the size of the "
        f"weight file(s) the runtime loads ÷ {results.get('n_params', '?')} parameters of the float32 model."
    )


def _goal_point(row: dict) -> str:
    goal = row["goal"]
    head = (f"- `{row.get('format', '?')}` ({_fmt(row.get('bits_per_weight'), '.2f')} bits/w, KLD "
            f"{_kld(row.get('kld_mean'))}; the goal needs KLD ≤ {_kld(goal.get('kld_needed'))}): ")
    if goal.get("dominated_by"):
        return head + "dominated by " + ", ".join(f"`{n}`" for n in goal["dominated_by"])
    if goal.get("best_fitting"):
        return head + (f"NOT dominated; the best tinyllm GGUF file no larger is `{goal['best_fitting']}` at "
                       f"{_fmt(goal.get('best_fitting_kld_ratio'), '.2f')}× its KLD")
    return head + "NOT dominated; no tinyllm GGUF file is that small"


def markdown_report(results: dict, plots: dict[str, str]) -> str:
    m, v = results.get("machine") or {}, results.get("versions") or {}
    out = [f"# tinyllm-bench: {results.get('checkpoint', '?')}", ""]
    out += [f"Created {results.get('created', '?')} by tinyllm {results.get('tinyllm_version', '?')}.", ""]
    if results.get("command"):
        out += ["```", results["command"], "```", ""]

    out += ["## Machine and versions", "", f"- {machine_line(results)}"]
    out += [f"- {k}: {m[k]}" for k in ("platform", "python") if m.get(k)]
    out += [f"- {text_line(results)}", f"- {speed_line(results)}"]
    if v:
        out.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    out += ["", "## Method", "", _method(results), ""]

    out += ["## Results", "", "| " + " | ".join(COLUMNS) + " |",
            "|" + "|".join(":---" if c in _LEFT else "---:" for c in COLUMNS) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in _cells(r)) + " |" for r in results.get("rows", [])]
    out.append("")
    if _footnote(results):
        out += [_footnote(results), ""]
    out += ["MiB: weight file(s) the runtime loads. ΔPPL, KLD and top-1 are against torch-f32. "
            "Rates are median (min–max) tokens per second. compile s: the time the PyTorch decode "
            "step took to compile (cold) or to load from the cache (warm), paid once before "
            "decoding; — where decode runs without one. status: FLAG means a bound was broken, "
            "error means the format could not be measured.", ""]
    described = [r for r in results.get("rows", []) if r.get("source") or r.get("describe")]
    if described:
        out += ["Formats (what each is; what runs it; the bound it is held to):", ""]
        out += [f"- `{r.get('format', '?')}`: " + "; ".join(
                    x for x in (r.get("source"), r.get("describe"), (r.get("bound") or {}).get("text")) if x)
                for r in described]
        out.append("")

    out += ["## Parity", "", parity_line(results), ""]
    if goal_line(results):
        out += ["## Against llama.cpp + imatrix", "", goal_line(results), ""]
        out += [_goal_point(r) for r in results.get("rows", []) if r.get("goal")] + [""]
    if server_line(results):
        out += ["## llama-server check", "", server_line(results), ""]
    problems = problem_lines(results)
    out += ["## Flags and errors", ""] + ([f"- {p}" for p in problems] or ["None."]) + [""]

    out += ["## Plots", ""]
    if plots.get("ppl_vs_bpw"):
        out += [f"![Perplexity against bits per weight]({plots['ppl_vs_bpw']})", ""]
    if plots.get("kld_vs_bpw"):
        out += [f"![Mean KLD against bits per weight, both Pareto fronts]({plots['kld_vs_bpw']})", ""]
    if plots.get("speed"):
        out += [f"![Prefill and decode speed]({plots['speed']})", ""]
    if not plots:
        out += ["Not drawn (matplotlib is not installed).", ""]
    return "\n".join(out)


# ---- plots ------------------------------------------------------------------------------------

def _style(row: dict) -> tuple[str, str]:
    return RUNTIME_STYLE.get(row.get("runtime"), _OTHER_STYLE)


def _measured(row: dict, *keys: str) -> bool:
    return not row.get("error") and all(row.get(k) is not None for k in keys)


def _save(fig, path: Path) -> None:
    # The temp file ends in .tmp, so the format must be named rather than read from the suffix.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _label_groups(rows: list[dict]) -> list[list[dict]]:
    """Rows whose points would overprint each other (f32 in three runtimes, say) share one label."""
    ppls = [r["ppl"] for r in rows]
    y_tol = 0.02 * ((max(ppls) - min(ppls)) if rows else 0) or 1e-9
    groups: list[list[dict]] = []
    for r in rows:
        for g in groups:
            if (abs(math.log2(r["bits_per_weight"] / g[0]["bits_per_weight"])) < 0.25
                    and abs(r["ppl"] - g[0]["ppl"]) <= y_tol):
                g.append(r)
                break
        else:
            groups.append([r])
    return groups


def _ppl_figure(plt, results: dict):
    rows = [r for r in results.get("rows", [])
            if _measured(r, "ppl", "bits_per_weight") and r["bits_per_weight"] > 0]
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    for runtime, (marker, colour) in RUNTIME_STYLE.items():
        mine = [r for r in rows if r.get("runtime") == runtime]
        if mine:
            ax.scatter([r["bits_per_weight"] for r in mine], [r["ppl"] for r in mine], marker=marker,
                       color=colour, s=45, label=runtime, zorder=3, alpha=0.8)
    others = [r for r in rows if r.get("runtime") not in RUNTIME_STYLE]
    if others:
        ax.scatter([r["bits_per_weight"] for r in others], [r["ppl"] for r in others],
                   marker=_OTHER_STYLE[0], color=_OTHER_STYLE[1], s=45, label="other", zorder=3)
    for group in _label_groups(rows):
        ax.annotate("\n".join(r.get("format", "?") for r in group),
                    (group[0]["bits_per_weight"], group[0]["ppl"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=7, va="bottom")
    base = next((r["ppl"] for r in rows if r.get("format") == "torch-f32"), None)
    if base is not None:
        ax.axhline(base, linestyle="--", color="black", linewidth=0.8, label=f"torch-f32 PPL {base:.4f}")
    _bpw_axis(ax, rows, "perplexity", "Perplexity against bits per weight")
    return fig


def _bpw_axis(ax, rows: list[dict], ylabel: str, title: str) -> None:
    """The x axis of bits per weight both size plots share, the legend, or a note that nothing was measured."""
    if rows:
        # Bit widths span 2…32: a log axis spaces them evenly; plain numbers read better than 2^n.
        ax.set_xscale("log", base=2)
        lo, hi = min(r["bits_per_weight"] for r in rows), max(r["bits_per_weight"] for r in rows)
        ax.set_xlim(lo / 1.25, hi * 1.6)  # room on the right for the labels of the widest formats
        ticks = [t for t in (2, 3, 4, 5, 6, 8, 12, 16, 24, 32) if lo / 1.25 <= t <= hi * 1.6]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no format measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("bits per weight (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)


def _kld_figure(plt, results: dict):
    """Mean KLD against bits per weight (both log), llama.cpp's and tinyllm's Pareto fronts, the goal."""
    rows = [r for r in results.get("rows", []) if _measured(r, "kld_mean", "bits_per_weight")
            and r["bits_per_weight"] > 0 and r["kld_mean"] > 0]  # a log axis has no room for KLD ≤ 0
    ours, theirs = tinyllm_files(rows), llama_cpp_rows(rows)
    not_gguf = [r for r in tinyllm_rows(rows) if r not in ours]
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    groups = (("tinyllm GGUF", ours, "o", "tab:blue", "tab:blue"),
              ("tinyllm checkpoint / ONNX (off the front)", not_gguf, "o", "none", "tab:blue"),
              ("llama.cpp + imatrix", [r for r in theirs if r.get("imatrix")], "^", "tab:green", "tab:green"),
              ("llama.cpp, no imatrix", [r for r in theirs if not r.get("imatrix")], "^", "none", "tab:green"))
    for label, mine, marker, face, edge in groups:
        if mine:
            ax.scatter([r["bits_per_weight"] for r in mine], [r["kld_mean"] for r in mine], marker=marker,
                       facecolors=face, edgecolors=edge, s=45, label=label, zorder=3)
    for label, mine, colour in (("tinyllm front", ours, "tab:blue"), ("llama.cpp front", theirs, "tab:green")):
        front = pareto_front(mine)
        if len(front) > 1:
            ax.step([r["bits_per_weight"] for r in front], [r["kld_mean"] for r in front], where="post",
                    color=colour, linewidth=1.2, alpha=0.7, label=label)
    points = [r for r in rows if r.get("goal")]
    if points:
        ax.scatter([r["bits_per_weight"] for r in points], [r["goal"]["kld_needed"] for r in points],
                   marker="v", facecolors="none", edgecolors="black", s=30, label="goal (≤ bits/w, ≤ KLD)")
        missed = [r for r in points if not r["goal"]["dominated_by"]]
        if missed:
            ax.scatter([r["bits_per_weight"] for r in missed], [r["kld_mean"] for r in missed], marker="o",
                       facecolors="none", edgecolors="red", s=160, linewidths=1.2, label="not dominated", zorder=4)
    for r in rows:
        ax.annotate(r.get("format", "?"), (r["bits_per_weight"], r["kld_mean"]), textcoords="offset points",
                    xytext=(5, 3), fontsize=6)
    if rows:
        ax.set_yscale("log")
    _bpw_axis(ax, rows, "mean KL divergence vs torch-f32 (nats/token, log scale)",
              "Mean KLD against bits per weight")
    return fig


def _bars(ax, rows: list[dict], key: str, title: str) -> None:
    for i, r in enumerate(rows):
        stat = r.get(key) or {}
        if r.get("error") or stat.get("median") is None:
            continue  # keep the row's slot so both panels line up, but draw nothing
        med = stat["median"]
        lo, hi = stat.get("min", med), stat.get("max", med)
        lo, hi = med if lo is None else lo, med if hi is None else hi
        # max(0, …): matplotlib refuses negative error bars, and a bad sample must not lose the plot
        ax.barh(i, med, color=_style(r)[1], xerr=[[max(0.0, med - lo)], [max(0.0, hi - med)]], capsize=3)
    ax.set_title(title)
    ax.set_xlabel("tokens / s")
    ax.grid(True, axis="x", alpha=0.3)


def _speed_figure(plt, results: dict):
    rows = [r for r in results.get("rows", []) if not r.get("error")
            and ((r.get("decode_tps") or {}).get("median") is not None
                 or (r.get("prefill_tps") or {}).get("median") is not None)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(rows) + 1.6), sharey=True, layout="constrained")
    _bars(axes[0], rows, "decode_tps", "decode (median, min–max)")
    _bars(axes[1], rows, "prefill_tps", "prefill (median, min–max)")
    axes[0].set_yticks(range(len(rows)), [r.get("format", "?") for r in rows])
    axes[0].invert_yaxis()  # table order, top to bottom
    if not rows:
        axes[0].text(0.5, 0.5, "no format measured", ha="center", va="center", transform=axes[0].transAxes)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for _, c in RUNTIME_STYLE.values()]
    fig.legend(handles, list(RUNTIME_STYLE), loc="outside lower center", ncols=len(RUNTIME_STYLE), fontsize=8)
    fig.suptitle(f"Speed at batch 1, {results.get('threads', '?')} threads")
    return fig


def plot(results: dict, out_dir: Path) -> dict[str, str]:
    """Write ppl_vs_bpw.png, kld_vs_bpw.png and speed.png into out_dir; return their file names (relative links)."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display, and no GUI backend picked up from the session
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in (("ppl_vs_bpw", _ppl_figure), ("kld_vs_bpw", _kld_figure), ("speed", _speed_figure)):
        fig = draw(plt, results)
        try:
            _save(fig, out_dir / PLOT_FILES[name])
        finally:
            plt.close(fig)  # pyplot keeps every figure alive until closed
    return dict(PLOT_FILES)


# ---- everything at once -----------------------------------------------------------------------

def _strict_json(value):
    # json.dumps would write NaN/Infinity, which strict JSON readers refuse; an unmeasurable figure
    # is null by the schema anyway.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def write_outputs(results: dict, out_dir: Path) -> dict[str, Path]:
    """results.json, the plots and report.md in out_dir; returns {"results", "report", plot names}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The measurements first: they took the time, and must survive a failure in the presentation.
    paths = {"results": out_dir / "results.json"}
    atomic_write_text(paths["results"], json.dumps(_strict_json(results), indent=2, ensure_ascii=False) + "\n")
    try:
        plots = plot(results, out_dir)
    except ImportError:  # matplotlib is optional: the report is still complete without pictures
        plots = {}
    paths.update({name: out_dir / file for name, file in plots.items()})
    paths["report"] = out_dir / "report.md"
    atomic_write_text(paths["report"], markdown_report(results, plots))
    return paths
