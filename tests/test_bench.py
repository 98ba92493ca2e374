"""`tinyllm-bench` on the test preset: real artifacts, real runtimes, llama.cpp's own tools.

The figures checked are the ones that must hold on any machine (structure, parity, fidelity of
verbatim exports, the reference file's format); speed is only checked to be measured.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyllm.bench.cli import main as bench_main
from tinyllm.bench.formats import FORMATS, PARITY_PCT
from tinyllm.bench.kld import Comparison, Reference, decode, encode
from tinyllm.llama_cpp import INSTALL_COMMAND

FORMATS_RUN = ("torch-f32,torch-int8,torch-int4-gptq,onnx-f32,onnx-int8,onnx-int8-level0,onnx-int8-dynamic,onnx-int4,"
               "onnx-int4-level0,onnx-int4-genai-builder,gguf-f32,gguf-q8_0,gguf-q4_0")
# Eager torch rows: compiling a graph per row would cost more than the rest of the run
# (tests/test_compiled.py runs the bench's compiled row once, on its graph already compiled).
FAST = ["--warmup", "0", "--repeats", "2", "--prompt-tokens", "16", "--decode-tokens", "8", "--calib-tokens", "2048",
        "--no-compile"]


def run(*args):
    return CliRunner().invoke(bench_main, [str(a) for a in args])


@pytest.fixture(scope="module")
def bench(trained_checkpoint, llama_cpp, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run(trained_checkpoint, "--formats", FORMATS_RUN, "--out", out, "--strict", *FAST)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text()), result.output


def test_results_cover_every_format_with_every_figure(bench):
    out, results, output = bench
    rows = {r["format"]: r for r in results["rows"]}
    assert list(rows) == FORMATS_RUN.split(",")
    for name, row in rows.items():
        assert row["error"] is None and row["flags"] == [], row
        assert row["runtime"] == FORMATS[name].runtime
        for key in ("ppl", "delta_ppl_pct", "kld_mean", "top1_agreement", "size_bytes", "bits_per_weight",
                    "peak_rss_bytes"):
            assert isinstance(row[key], (int, float)), (name, key)
        for key in ("prefill_tps", "decode_tps"):
            stats = row[key]
            assert len(stats["samples"]) == 2 and stats["min"] <= stats["median"] <= stats["max"] and stats["min"] > 0
        assert row["bound"]["ok"] is True
    assert results["data"]["n_ctx"] == 128 and results["data"]["scored_tokens"] == results["data"]["chunks"] * 63
    assert results["speed"]["prompt_tokens"] == 16 and "-t" in results["speed"]["llama_bench_flags"]
    assert results["threads"] >= 1 and results["machine"]["cpu_model"]
    for name in ("results.json", "report.md", "ppl_vs_bpw.png", "speed.png"):
        assert (out / name).is_file()
    for name in rows:
        assert name in output  # the terminal table


def test_parity_column_holds_for_the_float32_runtimes(bench):
    _, results, _ = bench
    parity = results["parity"]
    assert set(parity["formats"]) >= {"torch-f32", "onnx-f32", "gguf-f32"}
    values = list(parity["ppl"].values())
    assert parity["max_rel_diff_pct"] == pytest.approx(100 * (max(values) / min(values) - 1))
    assert parity["ok"] and parity["max_rel_diff_pct"] <= PARITY_PCT


def test_fidelity_is_measured_against_torch_f32(bench):
    _, results, _ = bench
    rows = {r["format"]: r for r in results["rows"]}
    # float32 in another runtime: next to nothing lost; int8 blocks: a little, the same in all three runtimes
    for name in ("onnx-f32", "gguf-f32"):
        assert abs(rows[name]["kld_mean"]) < 1e-4 and rows[name]["top1_agreement"] > 0.99
    assert rows["torch-int8"]["kld_mean"] > rows["onnx-f32"]["kld_mean"]
    for name in ("onnx-int8", "gguf-q8_0"):
        assert rows[name]["ppl"] == pytest.approx(rows["torch-int8"]["ppl"], rel=PARITY_PCT / 100)
    assert rows["torch-int8"]["bits_per_weight"] < 10 < rows["torch-f32"]["bits_per_weight"]
    # Level 0 is the PyTorch runtime of the same blocks; level 4 and llama.cpp both round the
    # activations to 8 bits per block of 32, and land as close; onnxruntime-genai's builder rounds
    # its own blocks; quantize_dynamic is onnxruntime's, measured beside as what a user would run.
    for bits, source, llama_cpp in (("int8", "torch-int8", "gguf-q8_0"), ("int4", "torch-int4-gptq", "gguf-q4_0")):
        assert rows[f"onnx-{bits}-level0"]["ppl"] == pytest.approx(rows[source]["ppl"], rel=1e-5)
        assert rows[f"onnx-{bits}"]["kld_mean"] <= FORMATS[f"onnx-{bits}"].kld_vs[1] * rows[llama_cpp]["kld_mean"]
    dynamic = rows["onnx-int8-dynamic"]
    assert dynamic["made_by"] == "onnxruntime" and "MatMulInteger" in dynamic["describe"] and dynamic["kld_mean"] > 0
    assert dynamic["size_bytes"] < rows["onnx-f32"]["size_bytes"]
    assert rows["onnx-int4-genai-builder"]["kld_mean"] > rows["onnx-int4"]["kld_mean"] > 0
    assert "a graph tinyllm did not write" in rows["onnx-int4-genai-builder"]["describe"]


def test_second_run_reuses_the_artifacts(bench, trained_checkpoint):
    out, first, _ = bench
    result = run(trained_checkpoint, "--formats", "torch-int8,gguf-q8_0", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    second = {r["format"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    before = {r["format"]: r for r in first["rows"]}
    for name in ("torch-int8", "gguf-q8_0"):
        assert second[name]["cached"] and second[name]["path"] == before[name]["path"]
        assert second[name]["ppl"] == pytest.approx(before[name]["ppl"], rel=1e-6)
    assert "making" not in result.output


def test_reference_file_round_trips_llama_cpp_layout(tmp_path):
    rng = np.random.default_rng(0)
    n_ctx, vocab = 8, 11
    chunks = [list(rng.integers(0, vocab, n_ctx)) for _ in range(2)]
    logits = [rng.normal(0, 4, (n_ctx - 1 - n_ctx // 2, vocab)).astype(np.float32) for _ in chunks]
    ref = Reference.write(tmp_path / "ref.kld", n_ctx, vocab, chunks, [encode(x) for x in logits])
    data = (tmp_path / "ref.kld").read_bytes()
    assert data[:8] == b"_logits_" and len(data) == 20 + 4 * n_ctx * 2 + 2 * 3 * (2 * 6 + 4) * 2
    got_ctx, got_vocab, tokens, rows = ref.read()
    assert (got_ctx, got_vocab) == (n_ctx, vocab) and tokens.tolist() == chunks
    for x, stored in zip(logits, rows):
        exact = x - x.max(1, keepdims=True)
        exact -= np.log(np.exp(exact).sum(1, keepdims=True))
        kept = exact > -16  # llama.cpp clamps log-probabilities 16 nats below the top
        assert np.abs(decode(stored, vocab) - exact)[kept].max() < 16 / 65535
    comparison = Comparison()
    for chunk, x, stored in zip(chunks, logits, rows):
        comparison.add(decode(stored, vocab), x, np.asarray(chunk[n_ctx // 2 + 1:]))
    figures = comparison.figures()
    assert abs(figures["kld_mean"]) < 1e-5 and figures["top1_agreement"] == 1.0


def test_bad_input_gets_one_clear_line(trained_checkpoint, tmp_path, monkeypatch):
    bad = run(trained_checkpoint, "--formats", "torch-f32,gguf-q3", "--out", tmp_path / "a")
    assert bad.exit_code != 0 and "unknown format gguf-q3" in bad.output and "gguf-q4_0" in bad.output
    missing = run(trained_checkpoint, "--formats", "gguf-f32", "--out", tmp_path / "b", "--llama-cpp", tmp_path)
    assert missing.exit_code != 0 and INSTALL_COMMAND in missing.output
    data = tmp_path / "latin1.txt"
    data.write_bytes("café".encode("latin-1") * 100)
    unreadable = run(trained_checkpoint, "--formats", "torch-f32", "--data", data, "--out", tmp_path / "c")
    assert unreadable.exit_code != 0 and "not UTF-8" in unreadable.output
    for result in (bad, missing, unreadable):
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "results.json").exists()


def test_rounds_tool_times_a_runs_rows_back_to_back(bench, tmp_path):
    """tools/bench_rounds.py on the run's results.json: every row timed once per round, and the ratio per round."""
    import subprocess
    import sys
    from pathlib import Path

    _, results, _ = bench
    (tmp_path / "results.json").write_text(json.dumps(results))  # the run's own (a later test benches again)
    tool = Path(__file__).resolve().parent.parent / "tools" / "bench_rounds.py"
    argv = [str(tmp_path / "results.json"), "--formats", "onnx-f32,onnx-int8,gguf-q8_0",
            "--ratio", "onnx-int8/gguf-q8_0", "--rounds", "2", "--repeats", "1", "--warmup", "0", "--prompt-tokens", "16", "--decode-tokens", "8",
            "--json", str(tmp_path / "rounds.json")]
    proc = subprocess.run([sys.executable, str(tool), *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads((tmp_path / "rounds.json").read_text())
    assert {name: len(v) for name, v in figures["decode_tps"].items()} == \
        {"onnx-f32": 2, "onnx-int8": 2, "gguf-q8_0": 2}
    assert all(x > 0 for v in figures["decode_tps"].values() for x in v)
    ratio = figures["ratios"]["onnx-int8/gguf-q8_0"]
    assert len(ratio["samples"]) == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert "onnx-int8/gguf-q8_0:" in proc.stdout
