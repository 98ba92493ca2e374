"""The compiled decode step: the eager path's greedy tokens and logits, for float32 and for every
quantized scheme; eager decoding and one line saying why where nothing can compile; CUDA graphs
on a GPU (skipped without one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import in_ci
from quantize import native
from quantize.quantizer import quantize_checkpoint
from tinyllm.bench.cli import main as bench_main
from tinyllm.cli import main as tinyllm_main
from tinyllm.runtime import compiled as compiled_step
from tinyllm.runtime import load_runtime

SCHEMES = {"int8": ("int8", False), "int4": ("int4", False), "int4-asym": ("int4", True)}
PROMPT = "Mira walked to the"
STEPS = 40
# Float32 logits of the same weights through differently fused kernels: summation order only.
ATOL = 1e-4


@pytest.fixture(scope="session")
def quantized_checkpoints(trained_checkpoint, tmp_path_factory):
    """The trained checkpoint quantized (round to nearest) into every scheme, once a session."""
    directory = tmp_path_factory.mktemp("quantized")
    made = {}
    for name, (scheme, asym) in SCHEMES.items():
        made[name] = directory / name
        quantize_checkpoint(trained_checkpoint, made[name], scheme, asym=asym)
    return made


@pytest.fixture(scope="session")
def runtime_pair(trained_checkpoint, quantized_checkpoints):
    """`runtime_pair(kind)`: (compiled, eager) runtimes of one checkpoint, compiled once a session."""
    made = {}

    def pair(kind: str, device: str = "cpu"):
        if (kind, device) not in made:
            path = trained_checkpoint if kind == "f32" else quantized_checkpoints[kind]
            lines = []
            compiled = load_runtime(path, device=device, compile=True, log=lines.append)
            info = compiled.warm_up()
            if not info.compiled:
                (pytest.fail if in_ci() else pytest.skip)(f"the decode step did not compile: {lines}")
            assert lines == [info.line()] and info.seconds > 0
            made[kind, device] = compiled, load_runtime(path, device=device, compile=False)
        return made[kind, device]

    return pair


def greedy_steps(runtime, n: int = STEPS) -> tuple[list[int], np.ndarray]:
    """Greedy tokens after the prompt and the logits of every step, through `forward` as the decode
    loop calls it (a prefill, then one token at a time)."""
    runtime.reset()
    logits = runtime.forward(runtime.tokenizer.encode(PROMPT))[-1:]
    tokens, steps = [], [logits[0]]
    for _ in range(n):
        tokens.append(int(steps[-1].argmax()))
        steps.append(runtime.forward([tokens[-1]])[0])
    return tokens, np.stack(steps)


@pytest.mark.parametrize("kind", ["f32", *SCHEMES])
def test_compiled_decode_equals_eager(runtime_pair, kind):
    compiled, eager = runtime_pair(kind)
    ours, ours_logits = greedy_steps(compiled)
    theirs, their_logits = greedy_steps(eager)
    assert ours == theirs
    np.testing.assert_allclose(ours_logits, their_logits, rtol=0, atol=ATOL)
    assert "compiled decode step" in compiled.describe() and "eager decode" in eager.describe()
    if native.load() is not None:
        # Every matrix is one native operator in the graph: no BLAS call, no dequantized copy.
        ops, config = compiled.decode_step.graph_ops, compiled.model.config
        op = "tinyllm.native_linear.default" if kind == "f32" else "tinyllm.native_matmul.default"
        assert ops[op] == 7 * config.n_layers + 1
        assert not [name for name in ops if name.startswith(("aten.linear", "aten.mm", "aten.addmm"))]
        assert not [name for name in ops if "attention" in name]  # attention as Inductor's own loops
        if kind == "f32":
            assert "float32 matmuls on the native kernel" in compiled.describe()


def test_compiled_step_keeps_the_cache_consistent_across_resets_and_shifts(runtime_pair):
    """Decode past the context (the loop's context shift re-prefills eagerly into the same cache)
    and again from a reset: the same tokens as the eager path."""
    from tinyllm.generate import generate_tokens
    from tinyllm.sampling import Sampler, SamplingParams

    compiled, eager = runtime_pair("f32")
    greedy = Sampler(SamplingParams(temperature=0, repetition_penalty=1.0))
    prompt = compiled.tokenizer.encode("The lighthouse")
    n = compiled.n_ctx + 20
    first = list(generate_tokens(compiled, prompt, n, greedy))
    assert first == list(generate_tokens(eager, prompt, n, greedy))
    assert first == list(generate_tokens(compiled, prompt, n, greedy))


def test_cli_compile_flags_give_the_same_text(trained_checkpoint, runtime_pair):
    runtime_pair("f32")  # the graph is compiled: the CLI's run loads it from the cache

    def generate(flag: str):
        result = CliRunner().invoke(tinyllm_main, ["generate", str(trained_checkpoint), "-p", "Mira", "-n", "16",
                                                   "--temperature", "0", flag])
        assert result.exit_code == 0, result.output
        return result

    on, off = generate("--compile"), generate("--no-compile")
    assert on.stdout == off.stdout and on.stdout.startswith("Mira")
    assert [ln for ln in on.stderr.splitlines() if ln.startswith("torch.compile:")] == \
        [next(ln for ln in on.stderr.splitlines() if "decode step" in ln)]
    assert "torch.compile" not in off.stderr


def test_bench_times_the_compiled_step_and_says_what_compiling_cost(trained_checkpoint, runtime_pair, tmp_path):
    runtime_pair("f32")  # in Inductor's cache: the bench's measuring process loads it from there
    result = CliRunner().invoke(bench_main, [str(trained_checkpoint), "--formats", "torch-f32", "--out", str(tmp_path),
                                             "--warmup", "0", "--repeats", "1", "--prompt-tokens", "8",
                                             "--decode-tokens", "4"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row["compile"]["compiled"] and row["compile"]["cached"] and row["compile"]["seconds"] > 0
    assert "compiled decode step" in row["describe"]
    line = next(ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("| torch-f32 |"))
    assert f"| {row['compile']['seconds']:.1f} warm |" in line


def test_doctor_says_which_decode_path_is_the_default_and_why(trained_checkpoint):
    result = CliRunner().invoke(tinyllm_main, ["doctor"])
    assert result.exit_code == 0, result.output
    on = compiled_step.default_compile(torch.device("cpu"))
    (line,) = [ln.strip() for ln in result.output.splitlines() if ln.strip().startswith("cpu: --")]
    assert line.startswith(f"cpu: {'--compile' if on else '--no-compile'} by default (")
    assert compiled_step.DEFAULT_WHY["cpu"] in line
    # and it is what a runtime told neither flag does
    runtime = load_runtime(trained_checkpoint)
    assert ("eager decode" in runtime.describe()) != on and (runtime.compile_info is None) == on


def _without_compiler(tmp_path, cxx: str):
    """`tinyllm generate --compile` in a fresh process whose $CC/$CXX is `cxx`, with an empty cache."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(CC=cxx, CXX=cxx, XDG_CACHE_HOME=str(tmp_path / "cache"))
    return env


@pytest.mark.slow
def test_no_compiler_decodes_eagerly_and_says_why(trained_checkpoint, tmp_path):
    env = _without_compiler(tmp_path, str(tmp_path / "no-such-c++"))
    args = [sys.executable, "-m", "tinyllm.cli", "generate", str(trained_checkpoint), "-p", "Mira", "-n", "8",
            "--temperature", "0", "--compile"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("torch.compile: off, decoding eagerly: "), done.stderr
    assert "no-such-c++" in lines[0]
    eager = subprocess.run(args[:-1] + ["--no-compile"], capture_output=True, text=True, timeout=300)
    assert done.stdout == eager.stdout and done.stdout.startswith("Mira")


@pytest.mark.slow
def test_a_compiler_that_fails_leaves_eager_decoding(trained_checkpoint, tmp_path):
    """A compiler that answers --version but cannot build: compiling fails inside Inductor, the
    runtime decodes eagerly, one line says so; tinyllm's cache directory was the one used."""
    fake = tmp_path / "broken-c++"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "g++ (broken) 12.2.0"; exit 0; }\n'
                    'echo "error: this compiler is broken" >&2\nexit 1\n')
    fake.chmod(0o755)
    script = ("from tinyllm.runtime import load_runtime\n"
              f"rt = load_runtime({str(trained_checkpoint)!r}, compile=True, log=print)\n"
              "info = rt.warm_up()\n"
              "assert not info.compiled and rt.decode_step is None\n"
              "rt.forward(rt.tokenizer.encode('Mira')); rt.forward([5])\n"
              "print(rt.describe())\n")
    done = subprocess.run([sys.executable, "-c", script], env=_without_compiler(tmp_path, str(fake)),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("torch.compile: off, decoding eagerly: compiling failed"), lines
    assert "eager decode" in lines[1]
    assert (tmp_path / "cache" / "tinyllm" / "inductor").is_dir()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA-graph decode step is not run")
def test_cuda_graph_decode_equals_eager(runtime_pair):
    compiled, eager = runtime_pair("f32", "cuda")
    ours, ours_logits = greedy_steps(compiled)
    theirs, their_logits = greedy_steps(eager)
    assert ours == theirs
    np.testing.assert_allclose(ours_logits, their_logits, rtol=0, atol=1e-3)  # TF32-free float32, other kernels
