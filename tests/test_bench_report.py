"""The bench report on a synthetic results dict: no model, no runtime, only the presentation."""

from __future__ import annotations

import copy
import json

import pytest

from tinyllm.bench.report import markdown_report, plot, terminal_table, write_outputs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_PARAMS = 4_123_456


def _tps(median, lo, hi):
    return {"median": median, "min": lo, "max": hi, "samples": [lo, median, median, hi, median]}


def _row(fmt, runtime, size_bytes, ppl, kld, top1, prefill, decode, **extra):
    base_ppl = 2.0582
    row = {
        "format": fmt, "runtime": runtime, "source": f"source of {fmt}",
        "describe": f"{fmt} on cpu (2 threads)", "path": f"runs/demo/bench/artifacts/{fmt}-1a2b3c4d5e6f",
        "size_bytes": size_bytes, "bits_per_weight": round(8 * size_bytes / N_PARAMS, 3),
        "build_seconds": 3.2, "cached": False, "ppl": ppl, "nll": 0.7218,
        "delta_ppl_pct": round(100 * (ppl / base_ppl - 1), 4), "kld_mean": kld, "top1_agreement": top1,
        "prefill_tps": _tps(*prefill), "decode_tps": _tps(*decode), "peak_rss_bytes": 412_345_678,
        "bound": {"text": "ΔPPL ≤ 5% vs torch-f32", "ok": True}, "flags": [], "notes": [], "error": None,
    }
    row.update(extra)
    return row


def _error_row(fmt, runtime, message):
    row = _row(fmt, runtime, 1, 1.0, 0.0, 1.0, (1, 1, 1), (1, 1, 1))
    for key in ("size_bytes", "bits_per_weight", "build_seconds", "ppl", "nll", "delta_ppl_pct", "kld_mean",
                "top1_agreement", "prefill_tps", "decode_tps", "peak_rss_bytes"):
        row[key] = None
    row.update(error=message, bound={"text": "ΔPPL ≤ 5% vs torch-f32", "ok": None})
    return row


@pytest.fixture
def results():
    f32 = N_PARAMS * 4
    rows = [
        _row("torch-f32", "torch", f32, 2.0582, 0.0, 1.0, (6500.0, 6100.0, 6700.0), (520.0, 500.0, 530.0),
             build_seconds=None, delta_ppl_pct=0.0,
             bound={"text": "reference", "ok": True}),
        _row("torch-int8", "torch", f32 // 4 + 40_000, 2.0590, 1.2e-4, 0.998, (3100.0, 3000.0, 3300.0),
             (410.0, 400.0, 415.0), cached=True),
        _error_row("torch-int4", "torch", "RuntimeError: int4 kernel not available on this CPU (no AVX2)"),
        _row("onnx-f32", "onnxruntime", f32 + 12_000, 2.0582, 2.0e-9, 1.0, (9000.0, 8800.0, 9100.0),
             (700.0, 690.0, 705.0), bound={"text": "|ΔPPL| ≤ 0.05% vs torch-f32 (parity)", "ok": True}),
        # A null figure on an otherwise measured row: the speed process's RSS could not be read.
        _row("onnx-int8", "onnxruntime", f32 // 4 + 50_000, 2.0601, 3.1e-4, 0.996, (7000.0, 6900.0, 7200.0),
             (650.0, 640.0, 660.0), peak_rss_bytes=None),
        _row("gguf-f32", "llama.cpp", f32 + 400_000, 2.0583, None, None, (21000.0, 20500.0, 21400.0),
             (900.0, 880.0, 910.0), bound={"text": "|ΔPPL| ≤ 0.05% vs torch-f32 (parity)", "ok": True},
             notes=["llama-server decode 850.0 tok/s, 0.94× llama-bench"]),
        _row("gguf-q4_0", "llama.cpp", N_PARAMS * 9 // 16 + 400_000, 2.3100, None, None,
             (25000.0, 24000.0, 25500.0), (1500.0, 1400.0, 1550.0),
             bound={"text": "ΔPPL ≤ 5% vs torch-f32", "ok": False},
             flags=["ΔPPL +12.235% exceeds the 5% bound for 4-bit formats"]),
        _row("gguf-q4_k", "llama.cpp", N_PARAMS * 9 // 16 + 420_000, 2.1000, None, None,
             (24000.0, 23000.0, 24400.0), (1450.0, 1420.0, 1460.0)),
    ]
    return {
        "tinyllm_version": "0.1.0",
        "created": "2026-11-24T09:12:00Z",
        "command": "tinyllm-bench runs/demo --formats all --out runs/demo/bench",
        "machine": {"cpu_model": "AMD EPYC 7B13", "cpus_usable": 2, "cpu_count": 64,
                    "platform": "Linux-6.8-x86_64", "python": "3.12.3", "torch": "2.13.0"},
        "versions": {"torch": "2.13.0", "onnxruntime": "1.23.2", "llama.cpp": "b7000 (abc1234)",
                     "gguf": "0.17.1", "numpy": "2.3.4"},
        "device": "cpu",
        "threads": 2,
        "checkpoint": "runs/demo",
        "n_params": N_PARAMS,
        "data": {"source": "validation", "chars": 50000, "tokens": 18200, "n_ctx": 256, "chunks": 71,
                 "scored_tokens": 9017},
        "speed": {"prompt_tokens": 128, "decode_tokens": 64, "warmup": 1, "repeats": 5,
                  "llama_bench_flags": ["-t", "2", "-r", "5", "-p", "128", "-n", "64", "-b", "128",
                                        "-ngl", "0"]},
        "bounds": {"parity_pct": 0.05, "int8_pct": 1.0, "int4_pct": 5.0},
        "rows": rows,
        "parity": {"formats": ["torch-f32", "onnx-f32", "gguf-f32"],
                   "ppl": {"torch-f32": 2.0582, "onnx-f32": 2.0582, "gguf-f32": 2.0583},
                   "max_rel_diff_pct": 0.0049, "bound_pct": 0.05, "ok": True},
        "server_check": {"format": "gguf-f32", "llama_bench_decode_tps": 900.0, "server_decode_tps": 850.0,
                         "server_prompt_tps": 5000.0, "ratio": 0.94},
    }


def _table_rows(table: str, n: int) -> list[str]:
    lines = table.splitlines()
    assert lines[1].replace(" ", "").strip("-") == ""  # the rule under the header
    assert lines[2 + n] == "", "the table must end right after its last row"
    return lines[2:2 + n]


def test_terminal_table_one_line_per_row_with_status(results):
    table = terminal_table(results)
    rows = _table_rows(table, len(results["rows"]))
    assert [line.split()[0] for line in rows] == [r["format"] for r in results["rows"]]
    assert len({len(line) for line in table.splitlines()[:2 + len(rows)]}) == 1  # fixed width
    status = {line.split()[0]: line.split()[-1] for line in rows}
    assert status["torch-int4"] == "error"
    assert status["gguf-q4_0"] == "FLAG"
    assert status["torch-f32"] == status["onnx-int8"] == "ok"
    assert "—" in rows[4]  # onnx-int8's null peak RSS
    assert "6500 (6100–6700)" in rows[0] and "520 (500–530)" in rows[0]


def test_terminal_table_lines_below(results):
    table = terminal_table(results)
    assert "AMD EPYC 7B13, 2 usable CPUs of 64, 2 threads" in table
    assert "18200 tokens, n_ctx 256, 71 chunks, 9017 scored tokens" in table
    assert "llama-bench -t 2 -r 5 -p 128 -n 64 -b 128 -ngl 0" in table
    assert "parity: torch-f32, onnx-f32, gguf-f32: max relative PPL difference 0.0049% (bound 0.05%) PASS" in table
    assert "llama-server check (gguf-f32)" in table
    # Flags and errors in full, not cut to fit the table.
    assert "FLAG gguf-q4_0: ΔPPL +12.235% exceeds the 5% bound for 4-bit formats" in table
    assert "error torch-int4: RuntimeError: int4 kernel not available on this CPU (no AVX2)" in table


def test_parity_failure_and_missing_sections(results):
    results["parity"]["ok"] = False
    results["server_check"] = None
    table = terminal_table(results)
    assert "max relative PPL difference 0.0049% (bound 0.05%) FAIL" in table
    assert "llama-server check" not in table
    results["parity"] = None  # torch-f32 itself failed: no reference to compare with
    assert "parity: not measured" in terminal_table(results)
    assert "parity: not measured" in markdown_report(results, {})


def test_markdown_report(results):
    text = markdown_report(results, {"ppl_vs_bpw": "ppl_vs_bpw.png", "speed": "speed.png"})
    assert "![Perplexity against bits per weight](ppl_vs_bpw.png)" in text
    assert "![Prefill and decode speed](speed.png)" in text
    assert "max relative PPL difference 0.0049% (bound 0.05%) PASS" in text
    assert results["command"] in text
    assert "onnxruntime 1.23.2" in text and "without BOS" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(results["rows"])
    assert all(line.count(" | ") == table[0].count(" | ") for line in table)
    assert "- FLAG gguf-q4_0:" in text and "- error torch-int4:" in text


def test_write_outputs(results, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    original = copy.deepcopy(results)
    out = tmp_path / "bench"
    paths = write_outputs(results, out)
    assert set(paths) == {"results", "report", "ppl_vs_bpw", "kld_vs_bpw", "speed"}
    assert results == original  # nothing written back into the caller's dict
    assert json.loads(paths["results"].read_text(encoding="utf-8")) == results
    for key in ("ppl_vs_bpw", "kld_vs_bpw", "speed"):
        assert paths[key].read_bytes()[:8] == PNG_SIGNATURE
        pixels = image.imread(paths[key])
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels.std() > 0.01  # something was drawn, not a blank canvas
    report = paths["report"].read_text(encoding="utf-8")
    assert "](ppl_vs_bpw.png)" in report and "](speed.png)" in report
    assert sorted(p.name for p in out.iterdir()) == ["kld_vs_bpw.png", "ppl_vs_bpw.png", "report.md", "results.json",
                                                     "speed.png"]


def test_plot_with_nothing_measured(results, tmp_path):
    pytest.importorskip("matplotlib")
    results["rows"] = [_error_row("torch-f32", "torch", "checkpoint not found")]
    assert plot(results, tmp_path) == {"ppl_vs_bpw": "ppl_vs_bpw.png", "kld_vs_bpw": "kld_vs_bpw.png",
                                       "speed": "speed.png"}
    assert (tmp_path / "speed.png").read_bytes()[:8] == PNG_SIGNATURE
