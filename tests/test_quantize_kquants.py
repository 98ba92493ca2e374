"""K-quant schemes (q2_k … q6_k) and `auto`: GGML's super-block layouts bit-exact against gguf's
decoder and llama-quantize's encoder, the PyTorch runtime exact to dequantize-then-matmul, GPTQ
beating round to nearest on KL divergence, GGUF export byte for byte and in llama.cpp's own
perplexity, --target-bpw landing on the size asked, and bad input."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import mean_kld, one_line_error, validation_chunks
from gguf import GGUFReader, LlamaFileType, quants
from safetensors.torch import load_file

from export.cli import main as export_cli
from export.gguf import export_gguf, permute_rope_rows
from quantize.auto import BLOCK_32, CANDIDATES
from quantize.checkpoint import load_quantized, weight_shapes
from quantize.kquant_linear import KQuantLinear
from quantize.kquant_search import quantize_k
from quantize.kquants import LAYOUTS, QK_K, KQuantWeight, KScheme, pack_codes, pack_scales, unpack_codes, unpack_scales
from quantize.quantizer import quantize_checkpoint
from tinyllm.checkpoint import load_checkpoint
from tinyllm.cli import main as tinyllm_cli
from tinyllm.config import ModelConfig
from tinyllm.dataset import load_splits
from tinyllm.evaluate import plain_text, recorded_spec
from tinyllm.runtime import load_runtime

NAMES = list(LAYOUTS)
# Relative RMS error of the reference quantizer on Gaussian weights: what each width gives, with room.
REL_ERROR = {"q2_k": 0.36, "q3_k": 0.18, "q4_k": 0.085, "q5_k": 0.042, "q6_k": 0.021}


def weights(n: int = 24, k: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0, :QK_K] = 0.0  # an all-zero super-block
    w[1] = w[1].abs() + 0.1  # all positive: the minimum stays at 0
    w[2, 40:56] = 0.0  # an all-zero sub-block inside a live super-block
    w[3, 7] = 1.5  # an outlier that sets its super-block's scale
    return w


@pytest.mark.parametrize("name", NAMES)
def test_every_code_and_scale_packs_as_ggml_lays_it_out(name):
    """Random integers over each field's whole range: packing round-trips, and gguf's reference
    decoder reads the blocks as the numbers our grid means (d*sc*q - dmin*m, bit for bit)."""
    layout = LAYOUTS[name]
    g = torch.Generator().manual_seed(1)
    n, nb = 12, 3
    q = torch.randint(layout.lo, layout.hi + 1, (n, nb * QK_K), generator=g, dtype=torch.int16)
    sc = torch.randint(layout.sc_lo, layout.sc_hi + 1, (n, nb, layout.nsub), generator=g, dtype=torch.int16)
    m = torch.randint(0, layout.sc_hi + 1, (n, nb, layout.nsub), generator=g, dtype=torch.int16)
    d, dmin = (torch.randn(n, nb, generator=g) * 0.01).half(), (torch.rand(n, nb, generator=g) * 0.01).half()
    qw = KQuantWeight.pack(layout, q, sc, m if layout.has_min else None, d, dmin if layout.has_min else None)
    assert torch.equal(unpack_codes(layout, pack_codes(layout, q)), q.to(torch.int8))
    back_sc, back_m = unpack_scales(layout, pack_scales(layout, sc, m))
    assert torch.equal(back_sc, sc) and (not layout.has_min or torch.equal(back_m, m))
    blocks = qw.blocks()
    assert blocks.dtype == np.uint8 and blocks.shape == (n, nb * quants.GGML_QUANT_SIZES[layout.qtype][1])
    np.testing.assert_array_equal(quants.dequantize(blocks, layout.qtype), qw.dequantize().numpy())
    steps = (d.float().unsqueeze(-1) * sc.float()).repeat_interleave(layout.sub, -1).reshape(n, -1)
    expected = steps * q.float() - ((dmin.float().unsqueeze(-1) * m.float()).repeat_interleave(
        layout.sub, -1).reshape(n, -1) if layout.has_min else 0)
    assert torch.equal(qw.dequantize(), expected)


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_and_weighted_quantizers_write_valid_blocks(name):
    """llama.cpp's reference quantizer and its imatrix-weighted one: blocks gguf decodes exactly,
    an all-zero super-block stays zero, the error is what the width gives, and the weighted search
    lowers the weighted error."""
    layout, w = LAYOUTS[name], weights()
    importance = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(2)) ** 4 + 1e-3
    plain, weighted = quantize_k(w, layout), quantize_k(w, layout, importance)
    for qw in (plain, weighted):
        decoded = quants.dequantize(qw.blocks(), layout.qtype)
        np.testing.assert_array_equal(decoded, qw.dequantize().numpy())
        assert np.all(decoded[0, :QK_K] == 0)
    rel = float(((plain.dequantize() - w) ** 2).mean().sqrt() / (w ** 2).mean().sqrt())
    assert rel < REL_ERROR[name]

    def weighted_error(qw):
        return float((((qw.dequantize() - w) ** 2) * importance).sum())

    assert weighted_error(weighted) < weighted_error(plain)


@pytest.mark.parametrize("name", NAMES)
def test_the_k_runtime_equals_dequantize_then_matmul(name):
    qw = quantize_k(weights(n=40), LAYOUTS[name])
    layer, reference = KQuantLinear(qw), qw.dequantize()
    assert torch.equal(layer.dequantized(), reference)
    idx = torch.tensor([[0, 39], [3, 3]])
    assert torch.equal(layer.rows(idx), reference[idx])
    for rows in (1, 7):
        x = torch.randn(rows, qw.shape[1], generator=torch.Generator().manual_seed(rows))
        torch.testing.assert_close(layer(x), x @ reference.T, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def validation_ids(k_checkpoint):
    return validation_chunks(k_checkpoint)


@pytest.fixture(scope="module")
def k_quantized(k_checkpoint, tmp_path_factory):
    """(scheme, method) -> the k_checkpoint quantized so, made on first use."""
    directory = tmp_path_factory.mktemp("kq")
    made = {}

    def get(name, method):
        if (name, method) not in made:
            out = directory / f"{name}-{method}"
            quantize_checkpoint(k_checkpoint, out, name, method=method, calib_tokens=2048)
            made[name, method] = out
        return made[name, method]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_gptq_beats_round_to_nearest_on_kl_divergence(name, k_checkpoint, k_quantized, validation_ids):
    reference, _ = load_checkpoint(k_checkpoint)
    rtn, _, _ = load_quantized(k_quantized(name, "rtn"))
    gptq, _, _ = load_quantized(k_quantized(name, "gptq"))
    kld_rtn, kld_gptq = mean_kld(reference, rtn, validation_ids), mean_kld(reference, gptq, validation_ids)
    assert kld_gptq < kld_rtn, (kld_gptq, kld_rtn)


def test_a_k_checkpoint_records_its_layout_and_runs_on_its_codes(k_checkpoint, k_quantized, validation_ids):
    checkpoint = k_quantized("q4_k", "gptq")
    q = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    assert (q["scheme"], q["format"], q["method"]) == ("q4_k", "q4_k", "gptq")
    entry = q["tensors"]["model.layers.1.mlp.down_proj.weight"]
    assert entry == {"format": "q4_k", "bits": 4, "symmetric": False, "super_block": 256, "sub_block": 32}
    assert q["tensors"]["model.embed_tokens.weight"]["format"] == "q6_k"  # the tied head, as llama-quantize does
    model, _, _ = load_quantized(checkpoint)
    reference, _ = load_checkpoint(k_checkpoint)
    for module_name, module in model.named_modules():
        if isinstance(module, KQuantLinear):
            reference.get_parameter(module_name.replace("embed_tokens.table", "embed_tokens") + ".weight").data.copy_(
                module.dequantized())
    with torch.inference_mode():
        torch.testing.assert_close(model(validation_ids[:2]), reference(validation_ids[:2]), rtol=1e-4, atol=1e-4)
    runtime = load_runtime(checkpoint)
    assert runtime.name == "torch-q4_k-gptq" and "q4_k:dequant" in runtime.describe()


@pytest.mark.parametrize("name", NAMES)
def test_gguf_export_copies_the_k_blocks_byte_for_byte(name, k_quantized, tmp_path):
    checkpoint = k_quantized(name, "rtn")
    gguf = tmp_path / "m.gguf"
    export_gguf(checkpoint, gguf, log=lambda _: None, progress=False)
    reader = GGUFReader(gguf)
    assert reader.get_field("tinyllm.type").contents() == name
    file_types = {"q2_k": LlamaFileType.MOSTLY_Q2_K, "q3_k": LlamaFileType.MOSTLY_Q3_K_S,
                  "q4_k": LlamaFileType.MOSTLY_Q4_K_S, "q5_k": LlamaFileType.MOSTLY_Q5_K_S,
                  "q6_k": LlamaFileType.MOSTLY_Q6_K}
    assert reader.get_field("general.file_type").contents() == file_types[name]
    config = ModelConfig.load(checkpoint / "config.json")
    stored, shapes = load_file(checkpoint / "model.safetensors"), weight_shapes(config)
    tensors = {t.name: t for t in reader.tensors}
    for hf_name, gguf_name, heads in (("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", config.n_heads),
                                      ("model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", config.n_kv_heads),
                                      ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight", None)):
        qw = KQuantWeight.from_tensors(KScheme(name), hf_name, stored, tuple(shapes[hf_name[6:]]), "test")
        blocks, weight = qw.blocks(), qw.dequantize().numpy()
        if heads:
            blocks, weight = permute_rope_rows(blocks, heads), permute_rope_rows(weight, heads)
        tensor = tensors[gguf_name]
        assert tensor.tensor_type == LAYOUTS[name].qtype
        assert np.asarray(tensor.data).tobytes() == blocks.tobytes(), gguf_name
        np.testing.assert_array_equal(quants.dequantize(np.asarray(tensor.data), tensor.tensor_type), weight)


@pytest.fixture(scope="module")
def validation_text(k_checkpoint):
    return plain_text(load_splits(recorded_spec(load_runtime(k_checkpoint)))[1])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_llama_perplexity_on_the_export_equals_tinyllm_eval(name, k_quantized, validation_text, llama_cpp, tmp_path):
    """The same weights in both runtimes; llama.cpp rounds its activations to 8 bits inside the
    K-quant dot products, which is all that may differ (allowed: 0.05%)."""
    checkpoint = k_quantized(name, "gptq")
    gguf = tmp_path / "m.gguf"
    export_gguf(checkpoint, gguf, log=lambda _: None, progress=False)
    ours = load_runtime(checkpoint).perplexity(validation_text, 128)
    theirs = load_runtime(gguf).perplexity(validation_text, 128)
    assert (theirs.n_chunks, theirs.n_tokens) == (ours.n_chunks, ours.n_tokens)
    assert abs(theirs.ppl / ours.ppl - 1) < 0.0005, (theirs.ppl, ours.ppl)


@pytest.mark.slow
def test_our_quantizers_write_llama_quantizes_bytes(k_checkpoint, validation_text, llama_cpp, tmp_path):
    """The reference quantizer is llama-quantize without an imatrix and the weighted one is
    llama-quantize --imatrix (quant_weights = the imatrix's mean squares), byte for byte, for
    every K-quant type and every matrix of the model."""
    f32 = tmp_path / "f32.gguf"
    export_gguf(k_checkpoint, f32, "f32", log=lambda _: None, progress=False)
    text, imatrix = tmp_path / "calib.txt", tmp_path / "imatrix.gguf"
    text.write_text(validation_text[:20000], encoding="utf-8")
    run = lambda *argv: subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300)  # noqa: E731
    done = run(llama_cpp.tool("llama-imatrix"), "-m", f32, "-f", text, "-o", imatrix, "-c", 128, "-t", 2)
    assert done.returncode == 0, done.stderr[-2000:]
    floats = {t.name: np.array(t.data) for t in GGUFReader(f32).tensors}
    stats = {t.name: np.array(t.data) for t in GGUFReader(imatrix).tensors}
    for name, layout in LAYOUTS.items():
        for weighted in (False, True):
            out = tmp_path / f"{name}-{weighted}.gguf"
            done = run(llama_cpp.tool("llama-quantize"), "--pure", *(["--imatrix", imatrix] if weighted else []),
                       f32, out, name.upper(), 2)
            assert done.returncode == 0, done.stderr[-2000:]
            checked = 0
            for tensor in GGUFReader(out).tensors:
                if tensor.tensor_type != layout.qtype:
                    continue
                key = tensor.name + ".in_sum2"
                importance = None
                if weighted and key in stats:  # llama-imatrix records no token_embd (a lookup)
                    importance = torch.from_numpy(stats[key] / stats[tensor.name + ".counts"][0]).float()
                ours = quantize_k(torch.from_numpy(floats[tensor.name]), layout, importance).blocks()
                assert ours.tobytes() == np.asarray(tensor.data).tobytes(), (name, weighted, tensor.name)
                checked += 1
            assert checked == 2 * 7 + 1


def quantize_cli(*args):
    return CliRunner().invoke(tinyllm_cli, ["quantize", *map(str, args)])


@pytest.mark.slow
def test_auto_lands_on_the_size_asked_and_records_each_type(k_checkpoint, tmp_path):
    target = 5.0
    out, gguf = tmp_path / "auto", tmp_path / "auto.gguf"
    result = quantize_cli("auto", k_checkpoint, "-o", out, "--target-bpw", target, "--calib-tokens", 2048)
    assert result.exit_code == 0, result.output
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (q["scheme"], q["format"], q["method"], q["target_bpw"]) == ("auto", "mixed", "gptq", target)
    config = ModelConfig.load(out / "config.json")
    entries = q["tensors"]
    assert len(entries) == 2 * 7 + 1 and "model.embed_tokens.weight" in entries
    assert all(e["format"] in CANDIDATES and e["chosen_by"] == "auto" and set(e["kl_divergence"]) == set(CANDIDATES)
               for e in entries.values())
    assert len({e["format"] for e in entries.values()}) > 1  # a mixture, not one type everywhere
    export_gguf(out, gguf, log=lambda _: None, progress=False)
    bpw = 8 * os.path.getsize(gguf) / config.num_params()
    assert abs(bpw / target - 1) < 0.02, bpw
    assert abs(bpw - q["bpw"]) < 0.001  # the plan counted the file the export writes
    written = {t.name: t.tensor_type.name.lower() for t in GGUFReader(gguf).tensors}
    assert written["token_embd.weight"] == entries["model.embed_tokens.weight"]["format"]
    assert written["blk.1.ffn_down.weight"] == entries["model.layers.1.mlp.down_proj.weight"]["format"]
    runtime = load_runtime(out)
    assert runtime.perplexity(plain_text(load_splits(recorded_spec(runtime))[1])[:5000], 128).ppl > 1


@pytest.mark.slow
def test_auto_gives_rows_narrower_than_256_the_32_block_types_and_says_so(trained_checkpoint, tmp_path):
    out = tmp_path / "auto"
    result = quantize_cli("auto", trained_checkpoint, "-o", out, "--target-bpw", 7, "--method", "rtn",
                          "--calib-tokens", 1024)
    assert result.exit_code == 0, result.output
    entries = json.loads((out / "config.json").read_text())["quantization_config"]["tensors"]
    assert all(e["format"] in BLOCK_32 and set(e["kl_divergence"]) == set(BLOCK_32) for e in entries.values())
    assert all("32-block types only" in e["note"] for e in entries.values())


def test_bad_input_gets_one_clear_line(trained_checkpoint, k_checkpoint, k_quantized, tmp_path):
    # The test preset's d_model of 64 does not split into 256-value super-blocks.
    one_line_error(quantize_cli("q4_k", trained_checkpoint, "-o", tmp_path / "a"),
                   "model.layers.0.self_attn.q_proj.weight", "(64, 64)", "256", "auto --target-bpw")
    one_line_error(quantize_cli("auto", k_checkpoint, "-o", tmp_path / "b", "--target-bpw", 1.5),
                   "--target-bpw 1.5", "below the smallest", "bpw")
    one_line_error(quantize_cli("auto", k_checkpoint, "-o", tmp_path / "c"), "auto needs --target-bpw")
    one_line_error(quantize_cli("q4_k", k_checkpoint, "-o", tmp_path / "d", "--target-bpw", 5), "auto only")
    one_line_error(quantize_cli("q5_k", k_checkpoint, "-o", tmp_path / "e", "--asym"), "--asym", "q5_k")
    assert os.listdir(tmp_path) == []  # nothing half-written
    result = CliRunner().invoke(export_cli, ["onnx", str(k_quantized("q6_k", "rtn")), "-o", str(tmp_path / "o")])
    one_line_error(result, "q6_k", "MatMulNBits", "tinyllm-export gguf", "int4 or int8")
    assert os.listdir(tmp_path) == []
