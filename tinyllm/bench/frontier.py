"""Size against fidelity: the Pareto fronts of bits per weight and mean KLD, and issue 13's goal.

The goal: for every llama.cpp + imatrix point (`gguf-*-imatrix`), a tinyllm-made GGUF file that
dominates it: no larger in bits per weight and with mean KLD at most KLD_FACTOR times its. Only
GGUF files compete, since the goal's bits per weight are a whole GGUF file's: a checkpoint's
weights file leaves the tokenizer out (about 0.2 bits/w on the demo model), which no GGUF can, and
each calibrated checkpoint has its verbatim GGUF copy among the rows anyway. A point no tinyllm
file dominates is flagged on its row, so `--strict` fails on it. Works on the results dict's rows
alone (`made_by`, `runtime`, `imatrix`, `bits_per_weight`, `kld_mean`), so report.py can draw the
fronts from a saved results.json.
"""

from __future__ import annotations

KLD_FACTOR = 0.5
LLAMA_CPP = "llama.cpp"  # `made_by` of the rows llama-quantize made
TINYLLM = "tinyllm"  # `made_by` of tinyllm's own files (the onnxruntime anchors' are onnxruntime's)


def _point(row: dict) -> bool:
    return not row.get("error") and row.get("bits_per_weight") is not None and row.get("kld_mean") is not None


def tinyllm_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if _point(r) and r.get("made_by") == TINYLLM]


def tinyllm_files(rows: list[dict]) -> list[dict]:
    """The tinyllm rows that compete for the goal: GGUF files (see the module's docstring)."""
    return [r for r in tinyllm_rows(rows) if r.get("runtime") == LLAMA_CPP]


def llama_cpp_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if _point(r) and r.get("made_by") == LLAMA_CPP]


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both size and KLD, smallest first (KLD falls along it)."""
    front: list[dict] = []
    for row in sorted(rows, key=lambda r: (r["bits_per_weight"], r["kld_mean"])):
        if not front or row["kld_mean"] < front[-1]["kld_mean"]:
            front.append(row)
    return front


def dominates(row: dict, point: dict, factor: float = KLD_FACTOR) -> bool:
    return row["bits_per_weight"] <= point["bits_per_weight"] and row["kld_mean"] <= factor * point["kld_mean"]


def goal_summary(rows: dict[str, dict]) -> dict | None:
    """Mark each measured imatrix point with what dominates it (or a flag); None without such points."""
    listed = list(rows.values())
    points = [r for r in llama_cpp_rows(listed) if r.get("imatrix")]
    if not points:
        return None
    ours = tinyllm_files(listed)
    dominated = []
    for point in points:
        winners = [r["format"] for r in ours if dominates(r, point)]
        fitting = [r for r in ours if r["bits_per_weight"] <= point["bits_per_weight"]]
        best = min(fitting, key=lambda r: r["kld_mean"], default=None)
        point["goal"] = {"dominated_by": winners, "kld_needed": KLD_FACTOR * point["kld_mean"],
                         "best_fitting": None if best is None else best["format"],
                         "best_fitting_kld_ratio": None if best is None or point["kld_mean"] <= 0
                         else best["kld_mean"] / point["kld_mean"]}
        if winners:
            dominated.append(point["format"])
            continue
        closest = ("no tinyllm GGUF file is that small" if best is None else
                   f"the best tinyllm GGUF file at or under that size is {best['format']} "
                   f"({best['bits_per_weight']:.2f} bits/w, KLD {best['kld_mean']:.2e}, "
                   f"{point['goal']['best_fitting_kld_ratio']:.2f}× its)")
        point.setdefault("flags", []).append(
            f"{point['format']}: no tinyllm GGUF file dominates this llama.cpp + imatrix point "
            f"({point['bits_per_weight']:.2f} bits/w, KLD {point['kld_mean']:.2e}): the goal needs "
            f"≤ {point['bits_per_weight']:.2f} bits/w and KLD ≤ {point['goal']['kld_needed']:.2e}; {closest}")
        if point.get("bound"):
            point["bound"]["ok"] = False
    return {"kld_factor": KLD_FACTOR, "points": [p["format"] for p in points], "dominated": dominated}


def goal_line(results: dict) -> str | None:
    goal = results.get("goal")
    if not goal:
        return None
    return (f"goal: {len(goal['dominated'])} of {len(goal['points'])} llama.cpp + imatrix points dominated by a "
            f"tinyllm GGUF file (bits/w no larger, mean KLD ≤ {goal['kld_factor']:g}× its)"
            + (f": {', '.join(goal['dominated'])}" if goal["dominated"] else ""))
