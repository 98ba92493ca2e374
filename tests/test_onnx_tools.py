"""Other tools on tinyllm's ONNX exports, and tinyllm on theirs, on real sessions: onnxruntime-genai
loads every kind of export (float and quantized checkpoints) and generates tinyllm's tokens, and
PyTorch's where the graph is exact, tokenizing as tinyllm does; optimum-onnx loads the exports; a
model the fused ops refuse gets the plain graph, which onnxruntime-genai runs; tinyllm's runtime
runs what onnxruntime-genai's own model builder writes.
"""

import json

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import GREEDY, ONNX_EXPORTS, QUANTIZED_ONNX, onnx_export_cli, relative_error, require
from tinyllm.generate import generate_tokens
from tinyllm.runtime import load_runtime
from tinyllm.sampling import Sampler



def og_greedy(directory, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """onnxruntime-genai's greedy tokens after `prompt`, and the logits each was chosen from."""
    og = require("onnxruntime_genai", "pip install -e '.[test]'")
    model = og.Model(str(directory))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens, logits = [], []
    while not generator.is_done():
        logits.append(generator.get_logits()[0, -1].copy())
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens, np.stack(logits)


def stepwise_logits(runtime, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """The logits `runtime` gives each of `tokens`, fed after `prompt` one at a time with the cache."""
    runtime.reset()
    out = [runtime.forward(prompt)[-1]] + [runtime.forward([t])[-1] for t in tokens[:-1]]
    runtime.reset()
    return np.stack(out)


OG_TOKENS = 24


@pytest.mark.parametrize("kind", list(ONNX_EXPORTS))
def test_onnxruntime_genai_runs_every_export_of_a_float_checkpoint(exported, torch_runtime, kind):
    prompt = torch_runtime.tokenizer.encode("Mira walked to the harbour")
    tokens, logits = og_greedy(exported(kind), prompt, OG_TOKENS)
    ours = load_runtime(exported(kind), threads=1)
    # The same graph under onnxruntime-genai and tinyllm's runtime: the same tokens and logits.
    assert tokens == list(generate_tokens(ours, prompt, OG_TOKENS, Sampler(GREEDY)))
    assert relative_error(logits, stepwise_logits(ours, prompt, tokens)) < 1e-5
    if kind in ("none", "plain"):  # exact graphs: PyTorch's own tokens and logits
        assert tokens == list(generate_tokens(torch_runtime, prompt, OG_TOKENS, Sampler(GREEDY)))
        assert relative_error(logits, stepwise_logits(torch_runtime, prompt, tokens)) < 1e-4


@pytest.mark.parametrize("name", [*QUANTIZED_ONNX, "int8-rtn-level4", "int4-gptq-level4"])
def test_onnxruntime_genai_runs_every_export_of_a_quantized_checkpoint(quantized_exports, name):
    checkpoint, directory = quantized_exports(name)
    torch_quantized = load_runtime(checkpoint, threads=1)
    prompt = torch_quantized.tokenizer.encode("Mira walked to the harbour")
    tokens, logits = og_greedy(directory, prompt, OG_TOKENS)
    assert tokens == list(generate_tokens(load_runtime(directory, threads=1), prompt, OG_TOKENS, Sampler(GREEDY)))
    if not name.endswith("level4"):  # level 0 is exact to the PyTorch quantized runtime
        assert tokens == list(generate_tokens(torch_quantized, prompt, OG_TOKENS, Sampler(GREEDY)))
        assert relative_error(logits, stepwise_logits(torch_quantized, prompt, tokens)) < 1e-4


def test_onnxruntime_genai_tokenizes_as_tinyllm(exported, torch_runtime):
    og = require("onnxruntime_genai", "pip install -e '.[test]'")
    tokenizer = og.Tokenizer(og.Model(str(exported("int4"))))
    for text in ("Mira walked to the harbour.", "<|im_start|>user\nWhere?<|im_end|>\n",
                 "héllo — 日本語 🙂\ttabs  and\n\nnewlines", "  two leading spaces"):
        assert tokenizer.encode(text).tolist() == torch_runtime.tokenizer.encode(text), text


@pytest.mark.parametrize("kind", ["none", "plain", "int4"])
def test_optimum_loads_the_exports(exported, torch_runtime, kind):
    """optimum-onnx's ORTModelForCausalLM on the directory as it is: its logits over a prompt and
    a greedy continuation through its own past_key_values (its generate() needs a transformers
    it does not support yet, so the loop is written here)."""
    require("optimum.onnxruntime", "pip install -e '.[test]'")
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(str(exported(kind)), use_cache=True)
    ours = load_runtime(exported(kind), threads=1)
    prompt = torch_runtime.tokenizer.encode("Mira walked to the harbour")
    ids = torch.tensor([prompt])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert relative_error(out.logits[0].numpy(), ours.logits(prompt)) < 1e-5
    tokens = []
    for _ in range(12):
        tokens.append(int(out.logits[0, -1].argmax()))
        ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
        out = model(input_ids=ids[:, -1:], attention_mask=torch.ones_like(ids), past_key_values=out.past_key_values)
    reference = torch_runtime if kind != "int4" else ours
    assert tokens == list(generate_tokens(reference, prompt, 12, Sampler(GREEDY)))


@pytest.fixture(scope="module")
def narrow_heads_checkpoint(trained_checkpoint, tmp_path_factory):
    """A checkpoint whose head_dim (8) GroupQueryAttention refuses: random weights, the fixture's tokenizer."""
    from tinyllm.checkpoint import load_checkpoint, write_checkpoint_files
    from tinyllm.model import Transformer

    model, tokenizer = load_checkpoint(trained_checkpoint)
    torch.manual_seed(0)
    narrow = Transformer(model.config.replace(n_heads=8, n_kv_heads=4)).eval()
    out = tmp_path_factory.mktemp("narrow") / "ckpt"
    out.mkdir()
    write_checkpoint_files(out, narrow, tokenizer)
    return out


def test_model_the_fused_ops_refuse_gets_the_plain_graph(narrow_heads_checkpoint, tmp_path):
    result = onnx_export_cli(narrow_heads_checkpoint, "-o", tmp_path / "out", "--quant", "int4")
    assert result.exit_code == 0, result.output
    why = [line for line in result.output.splitlines() if "fused graph not possible" in line]
    assert len(why) == 1 and "head_dim 8 is not a multiple of 16" in why[0] and "plain graph" in why[0]
    record = json.loads((tmp_path / "out" / "config.json").read_text())["tinyllm"]["onnx"]
    assert record["graph"] == "plain"
    assert "GroupQueryAttention" not in {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    runtime = load_runtime(tmp_path / "out", threads=1)
    prompt = runtime.tokenizer.encode("Mira walked")
    tokens, _ = og_greedy(tmp_path / "out", prompt, 8)
    assert tokens == list(generate_tokens(runtime, prompt, 8, Sampler(GREEDY)))


@pytest.mark.slow
def test_runtime_runs_what_onnxruntime_genais_builder_writes(trained_checkpoint, torch_runtime, tmp_path):
    """The builder reads our float32 checkpoint unchanged, and tinyllm's runtime runs its output
    (names and sizes from its genai_config.json) to PyTorch's logits and tokens."""
    import subprocess
    import sys

    require("onnx_ir", "pip install -e '.[test]'")
    out = tmp_path / "builder"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(trained_checkpoint),
                    "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache")],
                   check=True, capture_output=True)
    runtime = load_runtime(out, threads=1)
    assert runtime.n_ctx == torch_runtime.n_ctx and "did not write" in runtime.describe()
    ids = np.random.default_rng(5).integers(0, runtime.tokenizer.vocab_size, 40).tolist()
    assert relative_error(runtime.logits(ids), torch_runtime.logits(ids)) < 1e-4
    prompt = torch_runtime.tokenizer.encode("Mira walked to the harbour")
    expected = list(generate_tokens(torch_runtime, prompt, 16, Sampler(GREEDY)))
    assert list(generate_tokens(runtime, prompt, 16, Sampler(GREEDY))) == expected
