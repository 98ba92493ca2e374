"""The GGUF writer on its own: metadata, tokenizer, RoPE permutation, K-quant encoders, bad input.

llama.cpp's verdict on the files is in test_llama_cpp.py; here the `gguf` package reads them back.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, LlamaFileType, TokenType, quants

from export.cli import main as export_cli
from export.gguf import permute_rope_rows
from export.gguf_quants import encode
from tinyllm.chat import CHAT_TEMPLATE
from tinyllm.checkpoint import load_checkpoint
from tinyllm.cli import main as tinyllm_cli
from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import ENV_VAR, INSTALL_COMMAND, find_llama_cpp


def field(reader, key):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def test_f32_metadata_tokenizer_and_tensors(trained_checkpoint, gguf_export):
    model, tokenizer = load_checkpoint(trained_checkpoint)
    c = model.config
    reader = GGUFReader(gguf_export("f32"))
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.file_type") == LlamaFileType.ALL_F32
    expected = {"llama.context_length": c.max_seq_len, "llama.embedding_length": c.d_model,
                "llama.block_count": c.n_layers, "llama.feed_forward_length": c.d_ff,
                "llama.attention.head_count": c.n_heads, "llama.attention.head_count_kv": c.n_kv_heads,
                "llama.rope.dimension_count": c.head_dim, "llama.vocab_size": c.vocab_size}
    assert {k: field(reader, k) for k in expected} == expected
    assert field(reader, "llama.rope.freq_base") == pytest.approx(c.rope_theta)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(c.norm_eps)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.ggml.tokens") == tokenizer.tokens()
    assert field(reader, "tokenizer.ggml.merges") == tokenizer.merges()
    types = field(reader, "tokenizer.ggml.token_type")
    assert [i for i, t in enumerate(types) if t == TokenType.CONTROL] == [0, 1, 2]
    assert (field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id"),
            field(reader, "tokenizer.ggml.eot_token_id")) == (tokenizer.eot_id, tokenizer.eot_id, tokenizer.im_end_id)
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert json.loads(field(reader, "tinyllm.extra"))["preset"] == "test"
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 + 9 * c.n_layers  # tied: no output.weight
    embd = model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(tensors["token_embd.weight"].data), embd)
    q = model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_q.weight"].data), permute_rope_rows(q, c.n_heads))


def test_f16_and_q8_0_store_norms_as_f32(gguf_export):
    for type_name, matrix in (("f16", Q.F16), ("q8_0", Q.Q8_0)):
        types = {t.name: t.tensor_type for t in GGUFReader(gguf_export(type_name)).tensors}
        assert types["blk.0.attn_norm.weight"] == Q.F32 and types["output_norm.weight"] == Q.F32
        assert types["blk.1.ffn_down.weight"] == matrix and types["token_embd.weight"] == matrix


def _rope_rotate_half(x, pos, theta=10000.0):
    half = x.shape[-1] // 2
    freqs = pos * theta ** (-np.arange(half) / half)
    cos, sin = np.cos(np.concatenate([freqs, freqs])), np.sin(np.concatenate([freqs, freqs]))
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin


def _rope_interleaved(x, pos, theta=10000.0):
    """llama.cpp's LLAMA rope: consecutive pairs (2i, 2i+1) rotate by angle pos*theta^(-2i/d)."""
    half = x.shape[-1] // 2
    angle = pos * theta ** (-np.arange(half) / half)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * np.cos(angle) - b * np.sin(angle)
    out[..., 1::2] = a * np.sin(angle) + b * np.cos(angle)
    return out


def test_rope_permutation_turns_rotate_half_into_llama_cpp_pairs():
    rng = np.random.default_rng(0)
    n_head, head_dim, d_model = 4, 16, 32
    w = rng.standard_normal((n_head * head_dim, d_model))
    x = rng.standard_normal(d_model)
    permuted = permute_rope_rows(w, n_head)
    for pos in (0, 1, 7, 100):
        hf = _rope_rotate_half((w @ x).reshape(n_head, head_dim), pos)
        ours = _rope_interleaved((permuted @ x).reshape(n_head, head_dim), pos)
        # Same rotated vectors, in llama.cpp's row order: attention scores q·k are identical.
        np.testing.assert_allclose(ours, permute_rope_rows(hf.reshape(-1, 1), n_head).reshape(n_head, head_dim),
                                   atol=1e-12)


@pytest.mark.parametrize("qtype, ref, bound", [(Q.Q4_K, Q.Q4_1, 0.075), (Q.Q5_K, Q.Q5_1, 0.04),
                                               (Q.Q6_K, None, 0.02)])
def test_k_quant_encoders_decode_with_ggmls_reference(qtype, ref, bound):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((16, 512)) * 0.05).astype(np.float32)
    x[3] = np.abs(x[3]) + 0.1  # all positive: the offset must stay <= 0
    x[5, :256] = 0.0  # an all-zero super-block
    blocks = encode(x, qtype)
    assert blocks.dtype == np.uint8 and blocks.shape == (16, 2 * quants.GGML_QUANT_SIZES[qtype][1])
    y = quants.dequantize(blocks, qtype)
    assert np.all(y[5, :256] == 0)
    rel = float(np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean()))
    assert rel < bound
    if ref is not None:  # at least as good as the 32-block type with the same code width
        assert rel <= np.sqrt(((quants.dequantize(encode(x, ref), ref) - x) ** 2).mean() / (x ** 2).mean())


def run_export(*args):
    return CliRunner().invoke(export_cli, ["gguf", *map(str, args)])


def test_k_quants_need_256_wide_rows_or_allow_fallback(trained_checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    result = run_export(trained_checkpoint, "-o", out, "--type", "q4_k")
    assert result.exit_code == 1
    assert "blk.0.attn_q.weight (rows of 64)" in result.output and "--allow-fallback" in result.output
    assert not out.exists() and os.listdir(tmp_path) == []
    result = run_export(trained_checkpoint, "-o", out, "--type", "q4_k_m", "--allow-fallback")
    assert result.exit_code == 0, result.output
    assert "fallback: blk.1.ffn_down.weight" in result.output
    reader = GGUFReader(out)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == Q.Q5_0 and types["blk.1.ffn_down.weight"] == Q.Q8_0
    assert any("blk.0.ffn_up.weight" in line for line in field(reader, "tinyllm.fallback"))


def test_bad_input_is_one_line_and_writes_nothing(trained_checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    result = run_export(trained_checkpoint, "-o", out, "--type", "q3_xs")
    assert result.exit_code == 1 and "unknown GGUF type" in result.output and "q4_k_m" in result.output
    out.write_bytes(b"keep me")
    result = run_export(trained_checkpoint, "-o", out)
    assert result.exit_code == 1 and "--force" in result.output and out.read_bytes() == b"keep me"
    result = run_export(tmp_path / "nowhere", "-o", tmp_path / "x.gguf")
    assert result.exit_code == 1 and "nowhere" in result.output
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]
    result = run_export(trained_checkpoint, "-o", out, "--type", "Q8_0", "--force")
    assert result.exit_code == 0, result.output
    assert field(GGUFReader(out), "general.file_type") == LlamaFileType.MOSTLY_Q8_0


def test_missing_llama_cpp_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(TinyLLMError, match="install_llama_cpp"):
        find_llama_cpp()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    result = CliRunner().invoke(tinyllm_cli, ["serve", str(tmp_path / "m.gguf")])
    assert result.exit_code == 1 and INSTALL_COMMAND.split()[1] in result.output


def test_a_quantized_checkpoint_is_refused_not_requantized(trained_checkpoint, tmp_path):
    quantized = tmp_path / "q"
    shutil.copytree(trained_checkpoint, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "tinyllm", "format": "q4_0"}
    (quantized / "config.json").write_text(json.dumps(config))
    result = run_export(quantized, "-o", tmp_path / "m.gguf", "--type", "q4_0")
    assert result.exit_code == 1 and "quantized checkpoint" in result.output and "float32" in result.output
    assert not (tmp_path / "m.gguf").exists()
