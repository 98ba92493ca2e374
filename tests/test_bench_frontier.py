"""Size against fidelity on synthetic rows: the Pareto fronts, the goal's dominance and flags, the
KLD plot, and the table entries that size one row by another (no model, no runtime)."""

from __future__ import annotations

import pytest

from tinyllm.bench.artifacts import Artifacts
from tinyllm.bench.formats import FORMATS, INTERMEDIATES, Format, check_bounds, check_inputs, target_of
from tinyllm.bench.frontier import dominates, goal_line, goal_summary, pareto_front
from tinyllm.bench.report import markdown_report, plot, terminal_table
from tinyllm.errors import TinyLLMError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(name, bpw, kld, made_by="tinyllm", imatrix=False, runtime="llama.cpp", **extra):
    return {"format": name, "runtime": runtime, "made_by": made_by, "imatrix": imatrix,
            "bits_per_weight": bpw, "kld_mean": kld, "ppl": 2.0, "delta_ppl_pct": 0.1, "error": None,
            "flags": [], "bound": {"text": "b", "ok": True}, **extra}


def _point(name, bpw, kld):
    return _row(name, bpw, kld, made_by="llama.cpp", imatrix=True)


@pytest.fixture
def rows():
    """The issue's demo-model table, where tinyllm dominates none of the five imatrix points."""
    listed = [
        _row("torch-f32", 32.0, 0.0, runtime="torch"),
        _point("gguf-q2_k-imatrix", 4.10, 0.00820),
        _point("gguf-q3_k_m-imatrix", 4.80, 0.00200),
        _point("gguf-q4_k_m-imatrix", 5.51, 0.00084),
        _point("gguf-q5_k_m-imatrix", 6.15, 0.00037),
        _point("gguf-q6_k-imatrix", 6.83, 0.00024),
        _row("gguf-q4_k_m-llama-quantize", 5.51, 0.00120, made_by="llama.cpp"),
        _row("gguf-q4_0", 5.77, 0.00036),
        _row("gguf-q4_k", 5.51, 0.00088),
        _row("gguf-q6_k", 6.83, 0.00023),
        _row("gguf-q8_0", 8.76, 0.00004),
        _row("gguf-broken", None, None, error="llama-perplexity failed"),
    ]
    return {r["format"]: r for r in listed}


def test_pareto_front_keeps_only_unbeaten_points(rows):
    measured = [r for r in rows.values() if not r["error"] and r["made_by"] == "tinyllm"]  # torch-f32 too
    front = [r["format"] for r in pareto_front(measured)]
    # gguf-q4_0 is larger than gguf-q4_k yet better, so both stay; gguf-q6_k beats nothing smaller than q8_0
    assert front == ["gguf-q4_k", "gguf-q4_0", "gguf-q6_k", "gguf-q8_0", "torch-f32"]
    kld = [r["kld_mean"] for r in pareto_front(measured)]
    assert kld == sorted(kld, reverse=True)


def test_dominance_needs_no_larger_size_and_half_the_kld():
    point = _point("p", 5.5, 0.001)
    assert dominates(_row("a", 5.5, 0.0005), point)  # equal size, exactly half: dominates
    assert not dominates(_row("b", 5.51, 0.0001), point)  # larger, however good
    assert not dominates(_row("c", 4.0, 0.00051), point)  # smaller but not half the KLD


def test_goal_flags_each_undominated_point(rows):
    summary = goal_summary(rows)
    assert summary["points"] == [n for n in rows if n.endswith("-imatrix")] and summary["dominated"] == []
    q4 = rows["gguf-q4_k_m-imatrix"]
    assert q4["bound"]["ok"] is False and len(q4["flags"]) == 1
    assert "≤ 5.51 bits/w and KLD ≤ 4.20e-04" in q4["flags"][0]
    assert q4["goal"]["best_fitting"] == "gguf-q4_k" and q4["goal"]["best_fitting_kld_ratio"] == pytest.approx(
        0.00088 / 0.00084)
    assert "no tinyllm GGUF file is that small" in rows["gguf-q2_k-imatrix"]["flags"][0]
    # llama.cpp rows without the imatrix are on the front but are not the goal's points
    assert "goal" not in rows["gguf-q4_k_m-llama-quantize"] and rows["gguf-q4_k_m-llama-quantize"]["flags"] == []


def test_goal_met_where_a_tinyllm_file_dominates(rows):
    rows["torch-auto-q4_k_m"] = _row("torch-auto-q4_k_m", 5.50, 0.00040)
    rows["torch-auto-q2_k"] = _row("torch-auto-q2_k", 4.11, 0.00100)  # 0.01 bits/w too large
    summary = goal_summary(rows)
    assert summary["dominated"] == ["gguf-q3_k_m-imatrix", "gguf-q4_k_m-imatrix"]
    assert rows["gguf-q4_k_m-imatrix"]["goal"]["dominated_by"] == ["torch-auto-q4_k_m"]
    assert rows["gguf-q4_k_m-imatrix"]["flags"] == [] and rows["gguf-q4_k_m-imatrix"]["bound"]["ok"]
    assert rows["gguf-q2_k-imatrix"]["flags"]
    line = goal_line({"goal": summary})
    assert line.startswith("goal: 2 of 5 llama.cpp + imatrix points dominated") and "gguf-q4_k_m-imatrix" in line


def test_only_gguf_files_compete(rows):
    # a checkpoint's weights file leaves the tokenizer out: smaller than any GGUF of it, so it may not count
    rows["torch-int4-gptq"] = _row("torch-int4-gptq", 5.43, 0.00036, runtime="torch")
    summary = goal_summary(rows)
    assert summary["dominated"] == [] and rows["gguf-q4_k_m-imatrix"]["goal"]["best_fitting"] == "gguf-q4_k"


def test_no_goal_without_imatrix_points(rows):
    for name in [n for n in rows if n.endswith("-imatrix")]:
        del rows[name]
    assert goal_summary(rows) is None and goal_line({"goal": None}) is None


def _results(rows):
    return {"rows": list(rows.values()), "goal": goal_summary(rows), "threads": 2, "n_params": 1000}


def test_report_lists_every_point_and_draws_the_kld_plot(rows, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    results = _results(rows)
    assert "goal: 0 of 5 llama.cpp + imatrix points dominated" in terminal_table(results)
    files = plot(results, tmp_path)
    text = markdown_report(results, files)
    assert "## Against llama.cpp + imatrix" in text
    assert "- `gguf-q4_k_m-imatrix` (5.51 bits/w, KLD 8.40e-04; the goal needs KLD ≤ 4.20e-04): NOT dominated; " \
           "the best tinyllm GGUF file no larger is `gguf-q4_k` at 1.05× its KLD" in text
    assert "![Mean KLD against bits per weight, both Pareto fronts](kld_vs_bpw.png)" in text
    path = tmp_path / files["kld_vs_bpw"]
    assert path.read_bytes()[:8] == PNG_SIGNATURE and image.imread(path).std() > 0.01


def test_kld_plot_without_positive_kld(tmp_path):
    pytest.importorskip("matplotlib")
    only_f32 = {"torch-f32": _row("torch-f32", 32.0, 0.0), "gguf-f32": _row("gguf-f32", 32.2, -1e-9)}
    files = plot(_results(only_f32), tmp_path)  # nothing a log axis can hold: an empty plot, no error
    assert (tmp_path / files["kld_vs_bpw"]).read_bytes()[:8] == PNG_SIGNATURE


# ---- rows sized by another row ----------------------------------------------------------------

def test_every_table_input_resolves():
    check_inputs(FORMATS)
    assert FORMATS["gguf-q4_k_m-imatrix"].inputs == ["gguf-f32", "imatrix"]
    assert INTERMEDIATES["imatrix"].inputs == ["gguf-f32", "calibration-text"]


def test_bad_table_entries_are_refused():
    unknown = {"x": Format("x", "torch", "quantize", None, {"target_bpw_of": "gguf-q9_9"})}
    with pytest.raises(TinyLLMError, match="unknown format 'gguf-q9_9'"):
        check_inputs(unknown)
    loop = {"a": Format("a", "torch", "quantize", None, {"target_bpw_of": "b"}),
            "b": Format("b", "llama.cpp", "gguf", "a")}
    with pytest.raises(TinyLLMError, match="depends on itself"):
        check_inputs(loop)


def test_a_verbatim_export_inherits_its_sources_target(monkeypatch):
    sized = Format("torch-auto", "torch", "quantize", None, {"scheme": "auto", "target_bpw_of": "gguf-q4_k_m-imatrix"})
    monkeypatch.setitem(FORMATS, "torch-auto", sized)
    export = Format("gguf-auto", "llama.cpp", "gguf", "torch-auto")
    assert target_of(sized) == target_of(export) == "gguf-q4_k_m-imatrix"
    assert target_of(FORMATS["gguf-q4_0"]) is None


def test_the_key_follows_the_row_it_is_sized_by(trained_checkpoint, tmp_path, monkeypatch):
    artifacts = Artifacts(trained_checkpoint, tmp_path, None, 2048, lambda _: None)
    by_q8 = Format("s", "llama.cpp", "gguf", None, {"type": "q4_0", "target_bpw_of": "gguf-q8_0"})
    by_q4 = Format("s", "llama.cpp", "gguf", None, {"type": "q4_0", "target_bpw_of": "gguf-q4_0"})
    assert artifacts.key(by_q8) != artifacts.key(by_q4)
    # the referenced row's own recipe is in the key: a new calibration length re-sizes a GPTQ-sized row
    longer = Artifacts(trained_checkpoint, tmp_path, None, 4096, lambda _: None)
    assert artifacts.key(by_q8) == longer.key(by_q8) and artifacts.key(by_q4) != longer.key(by_q4)


def test_a_row_off_its_target_is_flagged(monkeypatch):
    for name in ("near", "far"):
        monkeypatch.setitem(FORMATS, name, Format(name, "llama.cpp", "gguf", None,
                                                  {"type": "q4_0", "target_bpw_of": "gguf-q8_0"}, 5.0))
    rows = {"torch-f32": {"ppl": 2.0}, "near": {"ppl": 2.01, "bits_per_weight": 8.92, "target_bpw": 8.76},
            "far": {"ppl": 2.01, "bits_per_weight": 9.02, "target_bpw": 8.76}}
    check_bounds(rows)
    assert "bits/w within ±2% of gguf-q8_0's" in rows["near"]["bound"]["text"]
    assert rows["near"]["bound"]["ok"] and rows["near"]["flags"] == []  # +1.8%: inside ±2%
    assert rows["far"]["bound"]["ok"] is False
    assert rows["far"]["flags"] == ["far: 9.020 bits/w is +3.0% off its target 8.760 (gguf-q8_0's), beyond ±2%"]
    # a checkpoint row sized by a GGUF row is not held to it: its weights file has no tokenizer in it
    monkeypatch.setitem(FORMATS, "ckpt", Format("ckpt", "torch", "quantize", None, {"target_bpw_of": "gguf-q8_0"}))
    rows = {"torch-f32": {"ppl": 2.0}, "ckpt": {"ppl": 2.01, "bits_per_weight": 8.5, "target_bpw": 8.76}}
    check_bounds(rows)
    assert rows["ckpt"]["flags"] == [] and "within ±2%" not in rows["ckpt"]["bound"]["text"]
