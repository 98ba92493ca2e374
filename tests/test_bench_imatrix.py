"""The bench's llama.cpp reference at its best: llama-imatrix over the calibration text, then
llama-quantize with and without it at Q2_K…Q6_K, and rows sized by another row's bits per weight.

The model is the test preset widened to d_model 256, d_ff 512, so that every matrix splits into
256-wide super-blocks and llama-quantize writes the K-quants themselves, not its 32-block fallback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinyllm.bench.cli import main as bench_main
from tinyllm.bench.formats import FORMATS, LLAMA_QUANTIZE_TYPES, Format
from tinyllm.config import preset
from tinyllm.train import Trainer

from conftest import tiny_train_config

KQUANT_ROWS = [f"gguf-{t.lower()}-{kind}" for t in LLAMA_QUANTIZE_TYPES for kind in ("llama-quantize", "imatrix")]
# Sized rows made by today's makers: a verbatim copy of torch-int8 sized to gguf-q8_0 (the same
# blocks, so on target), and tinyllm's Q4_0 writer sized to gguf-q8_0 (about half: off target).
SIZED = {
    "gguf-q8_0-sized": Format("gguf-q8_0-sized", "llama.cpp", "gguf", "torch-int8", {"target_bpw_of": "gguf-q8_0"},
                              what="torch-int8's blocks, sized to gguf-q8_0"),
    "gguf-q4_0-sized": Format("gguf-q4_0-sized", "llama.cpp", "gguf", None,
                              {"type": "q4_0", "target_bpw_of": "gguf-q8_0"}, what="Q4_0, sized to gguf-q8_0"),
}
FAST = ["--warmup", "0", "--repeats", "1", "--prompt-tokens", "8", "--decode-tokens", "4", "--calib-tokens", "2048"]


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide") / "run"
    config = preset("test").replace(d_model=256, d_ff=512)
    Trainer(config, tiny_train_config(steps=30), out, quiet=True).run()
    return out


@pytest.fixture(scope="module")
def bench(wide_checkpoint, llama_cpp, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-imatrix")
    names = ["torch-f32", "gguf-f32", *KQUANT_ROWS, *SIZED]
    with pytest.MonkeyPatch.context() as patch:  # the sized rows are this test's own table entries
        for name, fmt in SIZED.items():
            patch.setitem(FORMATS, name, fmt)
        result = CliRunner().invoke(bench_main, [str(wide_checkpoint), "--formats", ",".join(names), "--out",
                                                 str(out), "--strict", *FAST])
    results = json.loads((out / "results.json").read_text())
    return out, results, {r["format"]: r for r in results["rows"]}, result


def _record(out, name):
    (directory,) = (out / "artifacts").glob(f"{name}-{'[0-9a-f]' * 12}/")  # not NAME-sized-…
    return directory, json.loads((directory / "artifact.json").read_text())


def test_every_kquant_row_is_made_and_measured(bench):
    _, _, rows, _ = bench
    for name in KQUANT_ROWS:
        row = rows[name]
        assert row["error"] is None, row["error"]
        assert row["made_by"] == "llama.cpp" and row["imatrix"] == name.endswith("-imatrix")
        assert row["kld_mean"] > 0 and 0 < row["top1_agreement"] < 1 and row["bits_per_weight"] > 0
    for kind in ("llama-quantize", "imatrix"):
        bpw = [rows[f"gguf-{t.lower()}-{kind}"]["bits_per_weight"] for t in LLAMA_QUANTIZE_TYPES]
        assert bpw == sorted(bpw) and bpw[0] < 4 < bpw[-1] < 8, bpw  # Q2_K … Q6_K, smallest first
        klds = [rows[f"gguf-{t.lower()}-{kind}"]["kld_mean"] for t in LLAMA_QUANTIZE_TYPES]
        assert klds[0] > klds[-1]


def test_kquant_files_hold_kquant_tensors(bench):
    gguf = pytest.importorskip("gguf")
    _, _, rows, _ = bench
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(rows["gguf-q4_k_m-imatrix"]["path"]).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K"  # 256-wide rows: no fallback to a 32-block type
    assert "Q6_K" in types.values()  # Q4_K_M's mix keeps some tensors at Q6_K


def test_imatrix_comes_from_the_calibration_text(bench):
    out, _, rows, _ = bench
    _, text = _record(out, "calibration-text")
    assert text["tokens"] == 2048 and text["calibration"]["source"] == "training split"
    # decoded and tokenized again (as llama-imatrix --parse-special does), it is the same tokens
    assert text["same_tokens_prefix"] == text["retokenized_tokens"] == text["tokens"]
    directory, imatrix = _record(out, "imatrix")
    assert (directory / "imatrix.gguf").stat().st_size > 0
    assert "--parse-special" in imatrix["command"] and "-c 128" in imatrix["command"]
    for t in LLAMA_QUANTIZE_TYPES:
        plain, weighted = (rows[f"gguf-{t.lower()}-{kind}"] for kind in ("llama-quantize", "imatrix"))
        # about the same types (llama-quantize's mix may move a tensor when it has an imatrix), other codes
        assert plain["size_bytes"] == pytest.approx(weighted["size_bytes"], rel=0.01)
        assert open(plain["path"], "rb").read() != open(weighted["path"], "rb").read()


def test_goal_flags_undominated_imatrix_points_and_strict_fails(bench):
    out, results, rows, result = bench
    goal = results["goal"]
    assert goal["points"] == [n for n in KQUANT_ROWS if n.endswith("-imatrix")]
    for name in goal["points"]:
        row = rows[name]
        flagged = any("no tinyllm GGUF file dominates" in f for f in row["flags"])
        assert flagged == (not row["goal"]["dominated_by"]) == (name not in goal["dominated"])
    # the tinyllm rows here (copies of torch-int8 and a Q4_0) cannot beat Q2_K + imatrix at its size
    assert "gguf-q2_k-imatrix" not in goal["dominated"]
    assert result.exit_code == 1 and "problem(s)" in result.output
    assert "llama.cpp + imatrix points dominated" in result.output
    assert (out / "kld_vs_bpw.png").is_file() and "kld_vs_bpw.png" in (out / "report.md").read_text()


def test_rows_sized_by_another_row(bench):
    out, _, rows, _ = bench
    target = rows["gguf-q8_0-sized"]["target_bpw"]
    # gguf-q8_0 was not asked for, but it was made to size the others: its bits per weight are the target
    directory, reference = _record(out, "gguf-q8_0")
    n_params = json.loads((out / "results.json").read_text())["n_params"]
    assert target == pytest.approx(8 * (directory / "model.gguf").stat().st_size / n_params)
    assert reference["format"] == "gguf-q8_0"
    _, sized = _record(out, "gguf-q8_0-sized")
    assert sized["target_of"] == "gguf-q8_0" and sized["target_bpw"] == pytest.approx(target)
    on_target, off_target = rows["gguf-q8_0-sized"], rows["gguf-q4_0-sized"]
    assert on_target["bound"]["ok"] and on_target["flags"] == []
    assert on_target["bits_per_weight"] == pytest.approx(target, rel=1e-9)
    assert off_target["target_bpw"] == pytest.approx(target)
    assert [f for f in off_target["flags"] if "off its target" in f and "gguf-q8_0's" in f]
    assert np.isclose(off_target["bits_per_weight"] / target, 0.5, atol=0.1)
