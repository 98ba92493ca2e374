"""The command line: every command works end to end, and every bad input gets one clear line,
a non-zero exit and no traceback."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinyllm.chat import IM_START
from tinyllm.cli import main

SMALL_TRAIN = ["--preset", "test", "--corpus-size", "300000", "--steps", "4", "--eval-interval", "2",
               "--quiet", "--device", "cpu", "--no-facts"]


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_prints_perplexity_beside_unigram_baseline(tmp_path):
    result = run("train", *SMALL_TRAIN, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "unigram baseline perplexity" in result.output
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["event"] == "final" and final["ppl"] > 1 and final["unigram_ppl"] > 1


def test_generate_chat_and_eval(trained_checkpoint):
    result = run("generate", trained_checkpoint, "--prompt", "Mira", "-n", "12", "--temperature", "0")
    assert result.exit_code == 0 and result.stdout.startswith("Mira"), result.output
    result = run("chat", trained_checkpoint, "-n", "10", "--seed", "1", input="hello there\n/reset\nbye\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("assistant> ") == 2
    result = run("eval", trained_checkpoint, "--no-facts")
    assert result.exit_code == 0, result.output
    assert "unigram baseline" in result.output and "world-fact" not in result.output


def test_one_text_file_is_split_by_position_trains_and_evaluates(tmp_path):
    from tinyllm.data import generate_builtin_corpus

    prose = "\n\n".join(doc for doc in generate_builtin_corpus(80_000, qa_fraction=0) if IM_START not in doc)
    corpus = write(tmp_path / "input.txt", prose)
    result = run("train", *SMALL_TRAIN, "--data", corpus, "--val-fraction", "0.1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "run" / "config.json").read_text())["tinyllm"]["data"]
    assert data["source"] == str(corpus) and data["val_fraction"] == 0.1
    result = run("eval", tmp_path / "run")
    assert result.exit_code == 0, result.output
    scored = int(re.search(r"\(([\d,]+) tokens scored", result.output)[1].replace(",", ""))
    assert 0 < scored < 0.1 * len(prose) / 2  # half of each chunk of the last tenth is scored
    assert "world-fact accuracy: not measured (the model trained on" in result.output


def test_data_generate_and_stats(tmp_path):
    out = tmp_path / "corpus.txt"
    result = run("data", "generate", "--size", "20000", "--out", out)
    assert result.exit_code == 0 and out.stat().st_size >= 20000, result.output
    assert_one_line_error(run("data", "generate", "--size", "20000", "--out", out), "--force")
    result = run("data", "stats", "--data", out, "--vocab-size", "300")
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "validation" in result.output and "tokens" in result.output


def test_doctor_reports_versions_and_devices():
    result = run("doctor")
    assert result.exit_code == 0 and "torch" in result.output and "cpu:" in result.output


def copy_of(checkpoint: Path, dest: Path) -> Path:
    shutil.copytree(checkpoint, dest, ignore=shutil.ignore_patterns("best", "training_state*"))
    return dest


def write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "missing.txt", "no such file"),
    (lambda d: write(d / "empty.txt", ""), "empty"),
    (lambda d: write(d / "binary.txt", b"hello \xff\xfe world"), "not valid UTF-8"),
    (lambda d: (d / "nothing").mkdir() or d / "nothing", "no .txt or .jsonl files"),
    (lambda d: write(d / "bad.jsonl", '{"text": "ok"}\n{"text": \n'), "line 2"),
    (lambda d: write(d / "notext.jsonl", '{"title": "x"}\n'), "line 1"),
    (lambda d: write(d / "blank.txt", " \n\n\t"), "empty"),
    (lambda d: write(d / "short.txt", "far too short to train on, " * 3), "too few for windows"),
])
def test_failed_starts_leave_no_output_directory(tmp_path, make, fragment):
    source = make(tmp_path)
    out = tmp_path / "runs" / "out"
    assert_one_line_error(run("train", *SMALL_TRAIN, "--data", source, "--out", out), str(source.name), fragment)
    assert not out.exists()
    out.mkdir(parents=True)  # a directory that was there before the command stays
    assert_one_line_error(run("train", *SMALL_TRAIN, "--data", source, "--out", out), fragment)
    assert out.is_dir() and not any(out.iterdir())


def test_bad_checkpoints(trained_checkpoint, tmp_path):
    no_tokenizer = copy_of(trained_checkpoint, tmp_path / "a")
    (no_tokenizer / "tokenizer.json").unlink()
    assert_one_line_error(run("generate", no_tokenizer), "missing tokenizer.json")

    corrupt = copy_of(trained_checkpoint, tmp_path / "b")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert_one_line_error(run("generate", corrupt), "model.safetensors", "damaged")

    impossible = copy_of(trained_checkpoint, tmp_path / "c")
    config = json.loads((impossible / "config.json").read_text())
    config.update(num_attention_heads=5, head_dim=12)
    (impossible / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run("chat", impossible), "not divisible by n_heads=5")

    assert_one_line_error(run("generate", tmp_path / "nowhere"), "no such checkpoint directory")


def test_bad_training_requests(trained_checkpoint, tmp_path):
    assert_one_line_error(run("train", "--preset", "huge", "--out", tmp_path / "x"), "unknown preset 'huge'")
    assert_one_line_error(run("train", *SMALL_TRAIN, "--set", "n_heads=3", "--out", tmp_path / "y"),
                          "not divisible by n_heads=3")
    assert_one_line_error(run("train", *SMALL_TRAIN, "--out", trained_checkpoint), "already exists", "--force")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("flag, value", [("--temperature", "-1"), ("--top-p", "0"), ("--top-p", "2"),
                                         ("--top-k", "-5"), ("--repetition-penalty", "0"),
                                         ("--max-new-tokens", "0")])
def test_out_of_range_sampling_values(trained_checkpoint, flag, value):
    assert_one_line_error(run("generate", trained_checkpoint, flag, value), flag)


def test_console_script_and_module_entry_points(tmp_path):
    """`tinyllm` (installed script) and `python -m tinyllm.train` take the same flags."""
    exe = Path(sys.executable).with_name("tinyllm")
    result = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True)
    module = subprocess.run([sys.executable, "-m", "tinyllm.train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and module.returncode == 0
    assert result.stdout.replace("tinyllm train", "X") == module.stdout.replace("train.py", "X").replace(
        "python -m tinyllm.train", "X")
    bad = subprocess.run([sys.executable, "-m", "tinyllm.train", "--preset", "nope", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == "Error: unknown preset 'nope'; choose one of: " \
        "test, demo, small, base"
