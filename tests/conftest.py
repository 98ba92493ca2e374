"""Shared fixtures: one tiny model trained once per test session on a small built-in corpus."""

from __future__ import annotations

import os

import pytest

from tinyllm.config import preset
from tinyllm.dataset import DataSpec
from tinyllm.sampling import SamplingParams
from tinyllm.train import Trainer, train_config_for

# Small enough to train in seconds on two cores, large enough for a validation split of a few
# chunks of the test preset's 128-token context.
TEST_CORPUS_SIZE = 300_000
TEST_STEPS = 60


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(module: str, install: str):
    """Import an optional test dependency: skip locally, fail in CI (where it must be present)."""
    try:
        return __import__(module)
    except ImportError:
        if in_ci():
            pytest.fail(f"{module} is not installed; CI installs it with: {install}")
        pytest.skip(f"{module} not installed ({install})")


def tiny_train_config(**overrides):
    # Stories and topic chats only: a 60-step model trained on the short fact answers as well
    # mostly predicts <|im_end|>, and the parity tests need greedy continuations that run on.
    spec = DataSpec(source="builtin", size=TEST_CORPUS_SIZE, seed=0, qa_fraction=0.0)
    return train_config_for("test", **{"steps": TEST_STEPS, "device": "cpu", "data": spec, **overrides})


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A `test`-preset checkpoint directory trained on the built-in corpus."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    Trainer(preset("test"), tiny_train_config(), out, quiet=True).run()
    return out


@pytest.fixture(scope="session")
def k_checkpoint(tmp_path_factory):
    """The `test` preset at d_model 256 and d_ff 512 (every matrix splits into K-quant super-blocks),
    trained as `trained_checkpoint` is."""
    out = tmp_path_factory.mktemp("kckpt") / "run"
    Trainer(preset("test").replace(d_model=256, d_ff=512), tiny_train_config(), out, quiet=True).run()
    return out


@pytest.fixture(scope="session")
def llama_cpp():
    """llama.cpp's own tools (`make test` builds them first): skip locally, fail in CI when missing."""
    from tinyllm.errors import TinyLLMError
    from tinyllm.llama_cpp import INSTALL_COMMAND, TOOLS, locate

    try:
        found = locate()
        missing = list(TOOLS) if found is None else [t for t in TOOLS if found.find(t) is None]
        problem = f"llama.cpp's {', '.join(missing)} not installed; build them with: {INSTALL_COMMAND}"
    except TinyLLMError as e:  # $TINYLLM_LLAMA_CPP names a directory without the tools
        missing, problem = ["all"], str(e)
    if missing:
        if in_ci():
            pytest.fail(problem)
        pytest.skip(problem)
    return found


@pytest.fixture(scope="session")
def gguf_export(trained_checkpoint, tmp_path_factory):
    """`gguf_export(type)`: the trained checkpoint as a GGUF of that type, exported once per session."""
    from export.gguf import export_gguf

    directory = tmp_path_factory.mktemp("gguf")
    made = {}

    def export(type_name: str = "f32"):
        if type_name not in made:
            made[type_name] = directory / f"model-{type_name}.gguf"
            export_gguf(trained_checkpoint, made[type_name], type_name, log=lambda _: None, progress=False)
        return made[type_name]

    return export


@pytest.fixture(scope="session")
def onnx_model_dir(trained_checkpoint, tmp_path_factory):
    """The trained checkpoint as `tinyllm-export onnx` writes it (float32, the fused graph): the
    ONNX directory that onnxruntime-genai's `og.Model` loads and `tinyllm serve` serves."""
    from export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx-genai") / "model"
    export_onnx(trained_checkpoint, out, log=lambda line: None)
    return out


def validation_chunks(checkpoint, chunks: int = 8):
    """The checkpoint's validation text as tokens [chunks, n_ctx], for comparing models' logits."""
    import torch

    from tinyllm.dataset import load_splits
    from tinyllm.evaluate import plain_text, recorded_spec
    from tinyllm.runtime import load_runtime

    runtime = load_runtime(checkpoint)
    tokens = runtime.tokenizer.encode(plain_text(load_splits(recorded_spec(runtime))[1]), parse_special=False)
    chunks = min(chunks, len(tokens) // runtime.n_ctx)
    return torch.tensor(tokens[:chunks * runtime.n_ctx]).view(chunks, runtime.n_ctx)


def mean_kld(reference, model, ids) -> float:
    """Mean KL(reference || model) of the next-token distributions over `ids` [chunks, n_ctx]: how
    quantization is judged, since on easy text a lossy model's perplexity can come out lower."""
    import torch

    with torch.inference_mode():
        p = torch.log_softmax(reference(ids).double(), -1)
        q = torch.log_softmax(model(ids).double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def one_line_error(result, *fragments: str) -> None:
    """A CLI run that failed with exit status 1 and one line `Error: …` holding each fragment."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# Greedy decoding with nothing that reshapes the logits: what parity across runtimes compares.
GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0)


# --- ONNX exports shared by test_onnx.py and test_onnx_tools.py ----------------------------------

# (quant, accuracy level, graph) of each float-checkpoint export
ONNX_EXPORTS = {"none": ("none", 4, "fused"), "plain": ("none", 4, "plain"), "int8": ("int8", 4, "fused"),
                "int8-level0": ("int8", 0, "fused"), "int4": ("int4", 4, "fused"), "int4-level0": ("int4", 0, "fused")}
# (scheme, asym, method) of each quantized checkpoint exported with its own blocks
QUANTIZED_ONNX = {"int8-rtn": ("int8", False, "rtn"), "int4-gptq": ("int4", False, "gptq"),
                  "int4-asym-rtn": ("int4", True, "rtn")}


def made_once(make):
    """`make(name)` memoized for the session, its failure included: a failed export is made once
    and fails every test that asks for it, and only those."""
    made = {}

    def get(name):
        if name not in made:
            try:
                made[name] = make(name)
            except Exception as e:  # noqa: BLE001 - re-raised to each test that asks for this one
                made[name] = e
        if isinstance(made[name], Exception):
            raise made[name]
        return made[name]

    return get


@pytest.fixture(scope="session")
def exported(trained_checkpoint, onnx_model_dir, tmp_path_factory):
    """`exported(kind)`: the fixture checkpoint exported as ONNX_EXPORTS[kind] says, made on first
    use, each kind on its own ("none" is `onnx_model_dir`, the same export)."""
    from export.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx")

    def export(kind):
        if kind == "none":
            return onnx_model_dir
        quant, level, graph = ONNX_EXPORTS[kind]
        export_onnx(trained_checkpoint, root / kind, quant=quant, log=lambda m: None, accuracy_level=level,
                    graph=graph)
        return root / kind

    return made_once(export)


@pytest.fixture(scope="session")
def quantized_exports(trained_checkpoint, tmp_path_factory):
    """`quantized_exports(name)`: (quantized checkpoint, its ONNX export at accuracy level 0) for a
    name of QUANTIZED_ONNX, or at level 4, the CPU default, for that name + "-level4"; each made
    on first use."""
    from export.onnx import export_onnx
    from quantize.quantizer import quantize_checkpoint

    root = tmp_path_factory.mktemp("onnx-quantized")

    def checkpoint(name):
        scheme, asym, method = QUANTIZED_ONNX[name]
        quantize_checkpoint(trained_checkpoint, root / name, scheme, asym, method=method, calib_tokens=1024)
        return root / name

    checkpoints = made_once(checkpoint)

    def export(name):
        source, level = (name.removesuffix("-level4"), 4) if name.endswith("-level4") else (name, 0)
        export_onnx(checkpoints(source), root / f"{name}-onnx", log=lambda m: None, accuracy_level=level)
        return checkpoints(source), root / f"{name}-onnx"

    return made_once(export)


@pytest.fixture(scope="module")
def torch_runtime(trained_checkpoint):
    from tinyllm.runtime.torch_runtime import TorchRuntime

    return TorchRuntime.load(trained_checkpoint)


def relative_error(got, expected) -> float:
    import numpy as np

    return float(np.abs(got - expected).max() / np.abs(expected).max())


def onnx_export_cli(*args):
    """`tinyllm export onnx ARGS…` through click's runner."""
    from click.testing import CliRunner

    from tinyllm.cli import main

    return CliRunner().invoke(main, ["export", "onnx", *map(str, args)])
