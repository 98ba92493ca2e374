"""Quantization: block layouts (bit-exact against GGML's reference and onnxruntime's MatMulNBits),
RTN error bounds, the kernels' exactness, quantized checkpoints end to end, and bad input."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType, quants

from conftest import in_ci, one_line_error
from quantize import native
from quantize.checkpoint import load_quantized
from quantize.modules import NATIVE_ROWS, PATHS, QuantLinear, fits
from quantize.rtn import quantize_rtn
from quantize.schemes import ggml_blocks, make_scheme, matmul_nbits, pack_int4, unpack_int4
from tinyllm.checkpoint import load_checkpoint
from tinyllm.cli import main as tinyllm_main
from tinyllm.runtime import load_runtime

SCHEMES = [("int8", False), ("int4", False), ("int4", True)]
GGML = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0, "q4_1": GGMLQuantizationType.Q4_1}


def weights(n: int = 48, k: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[0, :32] = 0.0  # an all-zero group: scale 0, codes must still be valid
    w[1, 3] = 0.9  # an outlier that sets its group's scale
    return w


def test_pack_unpack_round_trips_bit_exactly():
    codes = torch.randint(0, 16, (7, 256), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    codes[0] = 15
    codes[1] = 0
    packed = pack_int4(codes)
    assert packed.shape == (7, 128) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed).to(torch.uint8), codes)
    assert torch.equal(pack_int4(unpack_int4(packed)), packed)


@pytest.mark.parametrize("name,asym", SCHEMES)
def test_rtn_blocks_are_ggml_reference_blocks(name, asym):
    """Codes and scales equal, byte for byte, what gguf's reference quantizer (llama.cpp's
    converter) writes; a 64-wide group maps onto GGML blocks that decode to the same values."""
    w = weights()
    qw = quantize_rtn(w, make_scheme(name, asym))
    qtype = GGML[qw.scheme.ggml_type]
    assert np.array_equal(ggml_blocks(qw), quants.quantize(w.numpy(), qtype))
    wide = quantize_rtn(w, make_scheme(name, asym, group_size=64))
    assert np.array_equal(quants.dequantize(ggml_blocks(wide), qtype), wide.dequantize().numpy())


@pytest.mark.parametrize("name,asym", SCHEMES)
@pytest.mark.parametrize("group_size", [32, 128])
def test_rtn_is_within_half_a_step(name, asym, group_size):
    w = weights()
    qw = quantize_rtn(w, make_scheme(name, asym, group_size))
    n, k = w.shape
    scale = qw.scales.float().repeat_interleave(group_size, dim=1)
    d = scale.abs()  # q4_0's scale is signed: d = x[argmax|x|] / -8
    target = w
    if name == "int4" and not asym:
        # q4_0's grid runs from -8d to 7d: values past 7.5 steps on the side opposite the group's
        # largest magnitude are clamped by construction; everything else rounds.
        target = torch.clamp(w, torch.minimum(-8 * scale, 7 * scale), torch.maximum(-8 * scale, 7 * scale))
    # Plus float16 rounding of the stored scale (and minimum): relative 2^-11, times codes up to
    # 127 (int8) or 16 (int4, minimum included).
    slack = 2.0 ** -11 * (127 if name == "int8" else 16) * d + 1e-7
    assert ((qw.dequantize() - target).abs() <= d / 2 + slack).all()


def test_int4_maps_onto_onnxruntime_matmul_nbits():
    """The symmetric int4 blocks, re-packed, run in a real MatMulNBits node to the same product."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    qw = quantize_rtn(weights(), make_scheme("int4"))
    n, k = qw.shape
    parts = matmul_nbits(qw)
    node = helper.make_node("MatMulNBits", ["x", "B", "scales"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=32)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, n])],
        [numpy_helper.from_array(parts["B"], "B"), numpy_helper.from_array(parts["scales"], "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, k)).astype(np.float16)
    y = session.run(None, {"x": x})[0].astype(np.float32)
    expected = x.astype(np.float32) @ qw.dequantize().numpy().T
    np.testing.assert_allclose(y, expected, rtol=2e-2, atol=2e-2)  # float16 activations and output


def need_kernel(path: str) -> None:
    """The native path needs a C compiler: skip locally without one, fail in CI (which has one)."""
    if path == "native" and native.load() is None:
        problem = f"{native.report()}; install a C compiler (e.g. apt-get install gcc) or set $CC"
        (pytest.fail if in_ci() else pytest.skip)(problem)


# Every kernel path paired with every scheme it can run (int4pack runs the 4-bit schemes only).
RUNNABLE = [(name, asym, path) for name, asym in SCHEMES for path in PATHS
            if not (path == "int4pack" and name == "int8")]


@pytest.mark.parametrize("name,asym,path", RUNNABLE)
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_every_kernel_path_equals_dequantize_then_matmul(name, asym, path, group_size):
    """Every path on every scheme and group size, for 48 rows and for an odd 387 (a head over an
    odd vocabulary; not int4pack's), one activation row (decode), a few, and more than the native
    kernel takes (BLAS on the weight it writes)."""
    need_kernel(path)
    scheme = make_scheme(name, asym, group_size)
    generator = torch.Generator().manual_seed(2)
    for n in (48, 387) if path != "int4pack" else (48,):
        qw = quantize_rtn(weights(n=n, k=256), scheme)
        layer = QuantLinear(qw, path)
        reference = qw.dequantize()
        torch.testing.assert_close(layer.dequantized(), reference, rtol=1e-6, atol=1e-7)
        idx = torch.tensor([[0, n - 1], [5, 5]])  # embedding lookups: the same numbers exactly
        assert torch.equal(layer.rows(idx), reference[idx])
        for rows in (1, 3, NATIVE_ROWS + 5):
            x = torch.randn(rows, 256, generator=generator)
            torch.testing.assert_close(layer(x), x @ reference.T, rtol=1e-5, atol=1e-5)


def assert_native_float32_path(n: int, k: int, generator: torch.Generator) -> None:
    """tl_matmul's float32 path (ctypes) equals x @ W^T for one row (decode) and a few."""
    w = torch.randn(n, k, generator=generator)
    for rows in (1, 3):
        x = torch.randn(rows, k, generator=generator)
        torch.testing.assert_close(native.linear(x, w), x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,k", [(48, 256), (387, 250)])
def test_the_native_float32_path_equals_matmul(n, k):
    """Rows in fours and columns in whole vectors, and a ragged tail of both; through ctypes and
    through the operator a compiled float32 graph calls."""
    need_kernel("native")
    generator = torch.Generator().manual_seed(4)
    assert_native_float32_path(n, k, generator)
    native.register_op()
    w, x = torch.randn(n, k, generator=generator), torch.randn(1, k, generator=generator)
    torch.testing.assert_close(torch.ops.tinyllm.native_linear(x, w), x @ w.T, rtol=1e-5, atol=1e-5)


# The kernel's other builds, beside the one -march=native picks here: flags that select each.
VARIANTS = {"portable C": ("-O3", "-fPIC"), "avx2+fma": ("-O3", "-march=native", "-mno-avx512f", "-fPIC")}


@pytest.mark.slow
@pytest.mark.parametrize("isa", VARIANTS)
def test_every_build_of_the_native_kernel_computes_the_same(isa, monkeypatch):
    need_kernel("native")
    kernel, why = native.build(VARIANTS[isa])
    if kernel is None or kernel.isa != isa:
        pytest.skip(f"this machine does not build the {isa} variant ({why or kernel.isa})")
    monkeypatch.setattr(native, "load", lambda: kernel)
    generator = torch.Generator().manual_seed(3)
    for (name, asym), group_size in itertools.product(SCHEMES, (32, 128)):
        qw = quantize_rtn(weights(n=387, k=256), make_scheme(name, asym, group_size))
        layer, reference = QuantLinear(qw, "native"), qw.dequantize()
        torch.testing.assert_close(layer.dequantized(), reference, rtol=1e-6, atol=1e-7)
        for rows in (1, 3):
            x = torch.randn(rows, 256, generator=generator)
            torch.testing.assert_close(layer(x), x @ reference.T, rtol=1e-5, atol=1e-5)
    assert_native_float32_path(387, 250, generator)


def test_int4pack_refuses_rows_it_cannot_run():
    qw = quantize_rtn(weights(n=40), make_scheme("int4"))
    assert not fits("int4pack", qw.scheme, 40)
    with pytest.raises(ValueError, match="int4pack"):
        QuantLinear(qw, "int4pack")
    assert QuantLinear(qw).path != "int4pack"


def test_without_the_native_kernel_the_torch_paths_run(monkeypatch):
    qw = quantize_rtn(weights(), make_scheme("int4", asym=True))
    monkeypatch.setattr(native, "load", lambda: None)
    assert not fits("native", qw.scheme, 48)
    with pytest.raises(ValueError, match="native"):
        QuantLinear(qw, "native")
    layer = QuantLinear(qw)
    assert layer.path in ("int4pack", "dequant")
    x = torch.randn(1, qw.shape[1])
    torch.testing.assert_close(layer(x), x @ qw.dequantize().T, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_no_compiler_means_no_native_kernel_and_says_why(tmp_path):
    """With $CC naming no compiler, a fresh process (empty kernel cache) builds nothing, reports
    why and still runs every scheme."""
    script = ("from quantize.modules import kernel_report\n"
              "from quantize.native import status\n"
              "assert status()[0] is None\n"
              "print('\\n'.join(kernel_report(64, 64)))\n")
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("native kernel: not available: no C compiler") and "no-such-cc" in lines[0]
    assert len(lines) == 4 and not any(": native (" in line for line in lines[1:])
    assert not (tmp_path / "cache").exists()


def quantize_cli(*args: str):
    return CliRunner().invoke(tinyllm_main, ["quantize", *args])


@pytest.fixture(scope="module")
def int4_checkpoint(trained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int4"
    result = quantize_cli("int4", str(trained_checkpoint), "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_quantized_checkpoint_records_its_quantization(trained_checkpoint, int4_checkpoint):
    config = json.loads((int4_checkpoint / "config.json").read_text())
    q = config["quantization_config"]
    assert (q["scheme"], q["format"], q["group_size"], q["method"]) == ("int4", "q4_0", 32, "rtn")
    tensors = q["tensors"]
    assert len(tensors) == 2 * 7 + 1 and tensors["model.embed_tokens.weight"]["format"] == "q8_0"
    assert tensors["model.layers.1.mlp.down_proj.weight"]["format"] == "q4_0"
    assert (int4_checkpoint / "tokenizer.json").read_bytes() == (trained_checkpoint / "tokenizer.json").read_bytes()
    size, float_size = ((p / "model.safetensors").stat().st_size for p in (int4_checkpoint, trained_checkpoint))
    assert size < float_size / 2.5


@pytest.mark.parametrize("path", PATHS)
def test_quantized_forward_equals_dequantized_float_forward(trained_checkpoint, int4_checkpoint, path):
    """The quantized model's logits equal those of the float32 model carrying the dequantized
    weights, on every kernel path, for a prompt and for cached single-token steps."""
    need_kernel(path)
    model, _, _ = load_quantized(int4_checkpoint, kernel=path)
    assert any(key.endswith(path) for key in model.kernel_paths())
    reference, _ = load_checkpoint(trained_checkpoint)
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            # The tied table is registered first under the embedding (its lm_head alias is skipped).
            reference.get_parameter(name.replace("embed_tokens.table", "embed_tokens") + ".weight").data.copy_(
                module.dequantized())
    ids = torch.arange(5, 45).unsqueeze(0)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-4, atol=1e-4)
        cache, ref_cache = model.new_cache(1), reference.new_cache(1)
        model(ids[:, :10], cache), reference(ids[:, :10], ref_cache)
        for t in range(10, 14):
            torch.testing.assert_close(model(ids[:, t:t + 1], cache), reference(ids[:, t:t + 1], ref_cache),
                                       rtol=1e-4, atol=1e-4)


def test_load_runtime_runs_a_quantized_checkpoint(int4_checkpoint):
    runtime = load_runtime(int4_checkpoint)
    assert runtime.name == "torch-int4-rtn"
    assert "q4_0:" in runtime.describe() and "q8_0:" in runtime.describe()
    result = CliRunner().invoke(tinyllm_main, ["generate", str(int4_checkpoint), "-p", "Mira", "-n", "5",
                                               "--temperature", "0"])
    assert result.exit_code == 0, result.output


def test_bad_input_gets_one_clear_line(trained_checkpoint, int4_checkpoint, tmp_path):
    # d_model is 64: groups of 128 do not divide the attention matrices' input dimension.
    one_line_error(quantize_cli("int8", str(trained_checkpoint), "-o", str(tmp_path / "a"), "--group-size", "128"),
                   "model.layers.0.self_attn.q_proj.weight", "(64, 64)", "group size 128")
    assert not (tmp_path / "a").exists()
    one_line_error(quantize_cli("int4", str(int4_checkpoint), "-o", str(tmp_path / "b")), "already quantized")
    one_line_error(quantize_cli("int8", str(trained_checkpoint), "-o", str(int4_checkpoint)),
                   "already exists", "--force")
    one_line_error(quantize_cli("int8", str(trained_checkpoint), "-o", str(tmp_path / "c"), "--asym"), "--asym")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def test_force_replaces_an_existing_output(trained_checkpoint, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result = quantize_cli("int4", str(trained_checkpoint), "-o", str(out), "--asym", "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "q4_1"
