"""Our GGUF files in llama.cpp's own tools: llama-perplexity against PyTorch, our K-quant blocks,
llama-quantize on our F32 file, llama-bench on every type we write.

Needs llama.cpp's binaries (`make test` builds them); skipped locally without them, failed in CI.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from gguf import GGUFReader, LlamaFileType, quants

from export.gguf import TYPES, export_gguf
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.dataset import load_splits
from tinyllm.evaluate import plain_text, recorded_spec
from tinyllm.model import Transformer
from tinyllm.runtime.llama_cpp_runtime import LlamaCppRuntime
from tinyllm.runtime.torch_runtime import TorchRuntime

pytestmark = pytest.mark.slow
# |PPL_llama.cpp / PPL_torch - 1| allowed for the fixture model (the bounds).
PPL_TOLERANCE = {"f32": 0.0005, "f16": 0.001, "q8_0": 0.005}


@pytest.fixture(scope="module")
def torch_runtime(trained_checkpoint):
    return TorchRuntime.load(trained_checkpoint)


@pytest.fixture(scope="module")
def validation_text(torch_runtime):
    return plain_text(load_splits(recorded_spec(torch_runtime))[1])


@pytest.fixture(scope="module")
def torch_ppl(torch_runtime, validation_text):
    return torch_runtime.perplexity(validation_text, torch_runtime.n_ctx)


@pytest.mark.parametrize("type_name", list(PPL_TOLERANCE))
def test_llama_perplexity_matches_pytorch(type_name, llama_cpp, gguf_export, validation_text, torch_ppl):
    runtime = LlamaCppRuntime.load(gguf_export(type_name))
    result = runtime.perplexity(validation_text, torch_ppl.n_ctx)
    assert (result.n_chunks, result.n_tokens) == (torch_ppl.n_chunks, torch_ppl.n_tokens)
    assert abs(result.ppl / torch_ppl.ppl - 1) < PPL_TOLERANCE[type_name], (result.ppl, torch_ppl.ppl)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of export.gguf.permute_rope_rows: llama.cpp row order back to Hugging Face's."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def wide_checkpoint(trained_checkpoint, tmp_path_factory):
    """The trained model laid out 256 wide, so K-quants apply without fallback, computing the same
    function: its 64 hidden dims spread over 256 (every 4th) and its 128 FFN units over 256 (every
    2nd), so every K-quant sub-block holds real weights; its 4 heads among 16 (the rest zero); norm
    weights halved and eps quartered, which cancels the RMS over the zero dims exactly."""
    small, tokenizer = load_checkpoint(trained_checkpoint)
    c = small.config
    config = c.replace(d_model=256, d_ff=256, n_heads=4 * c.n_heads, n_kv_heads=4 * c.n_kv_heads,
                       norm_eps=c.norm_eps / 4)
    hid, ffn = torch.arange(c.d_model) * 4, torch.arange(c.d_ff) * 2
    model = Transformer(config)
    src = small.state_dict()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["embed_tokens.weight"][:, hid] = src["embed_tokens.weight"]
    state["norm.weight"][hid] = src["norm.weight"] / 2
    for i in range(c.n_layers):
        p = f"layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[p + norm + ".weight"][hid] = src[p + norm + ".weight"] / 2
        for proj in ("q_proj", "k_proj", "v_proj"):
            w = src[p + f"self_attn.{proj}.weight"]
            state[p + f"self_attn.{proj}.weight"][: w.shape[0], hid] = w
        state[p + "self_attn.o_proj.weight"][hid[:, None], torch.arange(c.d_model)] = src[p + "self_attn.o_proj.weight"]
        for proj in ("gate_proj", "up_proj"):
            state[p + f"mlp.{proj}.weight"][ffn[:, None], hid] = src[p + f"mlp.{proj}.weight"]
        state[p + "mlp.down_proj.weight"][hid[:, None], ffn] = src[p + "mlp.down_proj.weight"]
    state["lm_head.weight"] = state["embed_tokens.weight"]  # tied: one tensor under both names
    model.load_state_dict(state)
    path = tmp_path_factory.mktemp("wide") / "ckpt"
    save_checkpoint(path, model, tokenizer)
    return path


@pytest.fixture(scope="module")
def wide_exports(wide_checkpoint, tmp_path_factory):
    directory = tmp_path_factory.mktemp("wide-gguf")
    out = {}
    for type_name in TYPES:
        out[type_name] = directory / f"wide-{type_name}.gguf"
        export_gguf(wide_checkpoint, out[type_name], type_name, log=lambda _: None, progress=False)
    return out


def _torch_on_gguf_weights(checkpoint, path) -> TorchRuntime:
    """PyTorch running exactly the weights a GGUF holds (decoded with gguf's reference decoders)."""
    model, tokenizer = load_checkpoint(checkpoint)
    config = model.config
    tensors = {t.name: np.array(quants.dequantize(np.asarray(t.data), t.tensor_type))
               for t in GGUFReader(path).tensors}
    state = model.state_dict()
    with torch.no_grad():
        for i in range(config.n_layers):
            b, p = f"blk.{i}.", f"layers.{i}."
            pairs = {"attn_q": ("self_attn.q_proj", config.n_heads), "attn_k": ("self_attn.k_proj", config.n_kv_heads)}
            for gguf_name, (ours, heads) in pairs.items():
                w = _unpermute(tensors[b + gguf_name + ".weight"], heads)
                state[p + ours + ".weight"].copy_(torch.from_numpy(w))
            for gguf_name, ours in (("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
                                    ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                                    ("ffn_down", "mlp.down_proj")):
                state[p + ours + ".weight"].copy_(torch.from_numpy(tensors[b + gguf_name + ".weight"]))
        state["embed_tokens.weight"].copy_(torch.from_numpy(tensors["token_embd.weight"]))
    return TorchRuntime(model, tokenizer)


@pytest.mark.parametrize("type_name", ["f32", "q4_k", "q5_k", "q6_k", "q4_k_m"])
def test_our_k_quant_blocks_mean_in_llama_cpp_what_they_mean_in_gguf(type_name, llama_cpp, wide_checkpoint,
                                                                      wide_exports, validation_text):
    """llama.cpp on our K-quant bytes scores the text as PyTorch does on the same decoded weights;
    a wrong bit layout would be far off. (llama.cpp's K-quant matmuls round activations to 8 bits,
    hence the 0.1% allowance; the difference seen is about 0.01%.)"""
    path = wide_exports[type_name]
    reference = _torch_on_gguf_weights(wide_checkpoint, path).perplexity(validation_text, 128)
    result = LlamaCppRuntime.load(path).perplexity(validation_text, 128)
    assert abs(result.ppl / reference.ppl - 1) < (0.0005 if type_name == "f32" else 0.001), \
        (result.ppl, reference.ppl)


def test_llama_quantize_accepts_our_f32(llama_cpp, gguf_export, tmp_path, validation_text):
    out = tmp_path / "requantized.gguf"
    proc = subprocess.run([str(llama_cpp.tool("llama-quantize")), str(gguf_export("f32")), str(out), "Q8_0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reader = GGUFReader(out)
    assert reader.get_field("general.file_type").contents() == LlamaFileType.MOSTLY_Q8_0
    assert reader.get_field("tokenizer.ggml.eot_token_id").contents() == 2
    assert LlamaCppRuntime.load(out).perplexity(validation_text, 128).ppl > 1


def test_llama_bench_runs_every_type_we_write(llama_cpp, wide_exports):
    paths = [str(wide_exports[t]) for t in TYPES]
    argv = [str(llama_cpp.tool("llama-bench")), "-p", "16", "-n", "4", "-r", "1", "-o", "json"]
    for path in paths:
        argv += ["-m", path]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(proc.stdout)
    assert {r["model_filename"] for r in runs} == set(paths)
    assert all(r["avg_ts"] > 0 for r in runs)
