"""Quantized ONNX graphs: weights as `MatMulNBits` blocks (INT8 and INT4 from a float checkpoint,
a quantized checkpoint's own blocks unchanged), the model of what the kernel's accuracy level 4
does to activations, and onnxruntime's dynamic INT8 (the bench's anchor, not an export).

Blocks are made and written in two separate steps, so that blocks made elsewhere are written
unchanged. From a float weight: `int8_blocks` is GGML's `q8_0` (scale = the block's largest
magnitude / 127, float16, codes rounded half away from zero: what `tinyllm quantize int8` and
llama.cpp write), `int4_blocks` the symmetric 4-bit rule onnxruntime's own quantizer uses (GGML's
`q4_0` rule: scale = the block's largest-magnitude value / -8, codes 0…15 around 8, float32
scales), both in blocks of 32 along K. `write_matmul_nbits` replaces each float MatMul by a
`com.microsoft` `MatMulNBits` carrying whatever `NBitsBlocks` it is given.

A quantized checkpoint's blocks map onto MatMulNBits (w = scale * (code - zero point)) as:
    q8_0  w = d * c, c in -127…127   bits 8, code c + 128, default zero point 128
    q4_0  w = d * (c - 8)            bits 4, the same nibbles re-paired, default zero point 8
    q4_1  w = d * c + m              bits 4, zero point 0, plus (x summed per group) @ m
q4_1 has no single-node exact form: its zero point -m/d is not an integer, and as a float zero
point onnxruntime 1.32 computes weights 1 ulp off PyTorch's d * c + m for some values. Its
minimums therefore go in a small float side branch. Every stored number is copied bit for bit;
the float16 scales and minimums become float32 exactly.

Accuracy level 4 (`level4_rounding`): onnxruntime's CPU kernels (MLAS `QuantizeARow_CompInt8`,
the same on AVX2 and AVX-512) round each block of a MatMulNBits input to int8 before integer dot
products: per block of the weight's block size, scale = max|x| / 127, x * (127 / max|x|) rounded
half to even. The integer products are exact on both ISAs (4-bit codes cannot overflow
`vpmaddubsw`'s int16 pairs; 8-bit codes are split into even and odd bytes on AVX2, summed by
`vpdpbusd` with VNNI), so this rounding, applied in PyTorch, reproduces one level-4 node to float
rounding (measured 1e-7 relative, 4 and 8 bits, on an AVX2 CPU). Through a whole graph a float
difference of 1e-7 upstream flips some rounding downstream, and the graph and the model become two
draws of the same noise (up to 6e-3 apart in the logits of the small preset): export validation
compares what they do to the output distribution (export/onnx.py).

onnxruntime's dynamic INT8 (`quantize_dynamic`: `DynamicQuantizeLinear` + `MatMulInteger`, u8
activations × s8 weights) is not what `--quant int8` writes: on x86 CPUs without VNNI its kernel
sums pairs of products in int16 with saturation (`vpmaddubsw`; onnxruntime's quantization docs
say so), which on an AVX2 CPU put 14% of the test model's largest logit off. The bench measures
it (`onnx-int8-dynamic`) as what an onnxruntime user would otherwise run.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from export.onnx_graph import save_model
from quantize.checkpoint import load_quantized, weight_shapes
from quantize.modules import QuantizedTransformer
from quantize.rtn import quantize_rtn
from quantize.schemes import QuantizedWeight, Scheme, make_scheme, matmul_nbits
from tinyllm.checkpoint import WEIGHTS_FILE, read_tensors
from tinyllm.errors import TinyLLMError
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

BLOCK = 32  # the block along K of the weights quantized here (int8 and int4)
MS_DOMAIN = "com.microsoft"
# The quantized checkpoints' formats `checkpoint_blocks` writes into MatMulNBits (the K-quants'
# 2-6-bit codes under quantized sub-block scales have no such form).
NBITS_FORMATS = ("q8_0", "q4_0", "q4_1")


@dataclass
class NBitsBlocks:
    """One weight W [K, N] (MatMul's B) as blocks along K, in MatMulNBits layout.

    codes:  uint8 [N, K / block, block * bits / 8]; for 4 bits two codes per byte, the lower K
            index in the low nibble. A code c stands for (c - 2^(bits-1)) * scale, or, with
            `mins`, for c * scale + min (zero point 0).
    scales: float32 [N, K / block];  mins: float32 [N, K / block] or None.
    """

    codes: np.ndarray
    scales: np.ndarray
    k: int
    block_size: int = BLOCK
    bits: int = 4
    mins: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    def dequantize(self) -> np.ndarray:
        """The float weight [K, N] these blocks stand for."""
        codes = self.codes
        if self.bits == 4:
            codes = np.stack([codes & 0x0F, codes >> 4], axis=-1)
        codes = codes.reshape(self.n, -1, self.block_size).astype(np.float32)
        zero = 0.0 if self.mins is not None else float(1 << (self.bits - 1))
        w = (codes - zero) * self.scales[..., None]
        if self.mins is not None:
            w = w + self.mins[..., None]
        return w.reshape(self.n, self.k).T


def checkpoint_blocks(qw: QuantizedWeight) -> NBitsBlocks:
    """A quantized checkpoint's weight as MatMulNBits blocks: its codes, scales and minimums as
    stored (re-laid out, never re-rounded; see the module docstring for the mapping)."""
    n, k = qw.shape
    g, scheme = qw.scheme.group_size, qw.scheme
    scales = qw.scales.float().numpy().reshape(n, k // g)
    if scheme.bits == 8:
        codes = (qw.codes.numpy().astype(np.int16) + 128).astype(np.uint8).reshape(n, k // g, g)
        return NBitsBlocks(codes, scales, k, g, bits=8)
    # q4_1's nibbles are packed as q4_0's; matmul_nbits re-pairs them (the zero point is the node's).
    packed = matmul_nbits(QuantizedWeight(replace(scheme, asym=False), qw.codes, qw.scales))["B"]
    mins = qw.mins.float().numpy().reshape(n, k // g) if scheme.asym else None
    return NBitsBlocks(packed, scales, k, g, bits=4, mins=mins)


@dataclass
class QuantizedCheckpoint:
    """A quantized checkpoint as the exporter needs it."""

    reference: QuantizedTransformer  # what QuantizedTorchRuntime runs: the validation reference
    model: Transformer  # a float32 twin holding the dequantized weights, traced into the graph
    tokenizer: Tokenizer
    blocks: dict[str, NBitsBlocks]  # by the graph's MatMul weight name (`….weight.T`)
    info: dict  # config.json's quantization_config


def read_quantized_checkpoint(path: Path) -> QuantizedCheckpoint:
    """Load a quantized checkpoint: its PyTorch model, a float twin to trace, its MatMulNBits blocks.

    The twin's quantized tensors are the dequantized values PyTorch computes with, so the traced
    embedding table (a Gather: a lookup, so dequantizing it is exact) is the checkpoint's own;
    its MatMul weights are then replaced by the checkpoint's blocks. A tied quantized embedding
    is also the head: its blocks go to the head's MatMul."""
    reference, tokenizer, info = load_quantized(path, kernel="dequant")
    config = reference.config
    tensors, shapes = read_tensors(path / WEIGHTS_FILE), weight_shapes(config)
    weights = {name.removeprefix("model."): QuantizedWeight.from_tensors(
        Scheme.from_dict(entry), name, tensors, tuple(shapes[name.removeprefix("model.")]), str(path))
        for name, entry in info["tensors"].items()}
    model = Transformer(config)
    expected = model.state_dict()
    state = {k: v for k, v in reference.state_dict().items() if k in expected}  # norms, float tables
    state |= {name: qw.dequantize() for name, qw in weights.items()}
    tied_head = {"lm_head.weight"} if config.tie_embeddings else set()
    if set(expected) - set(state) - tied_head:
        raise TinyLLMError(f"{path}: tensors {sorted(set(expected) - set(state) - tied_head)[:4]} are neither "
                           "float nor quantized; the quantized checkpoint is damaged")
    model.load_state_dict(state, strict=False)

    def graph_name(name: str) -> str | None:
        if name == "embed_tokens.weight":
            return "lm_head.weight.T" if config.tie_embeddings else None  # an untied table is only a Gather
        return name + ".T" if name == "lm_head.weight" else f"model.{name}.T"

    blocks = {graph_name(name): checkpoint_blocks(qw) for name, qw in weights.items() if graph_name(name)}
    return QuantizedCheckpoint(reference, model.eval(), tokenizer, blocks, info)


def int4_blocks(weight: np.ndarray, block_size: int = BLOCK) -> NBitsBlocks:
    """Round W [K, N] to symmetric 4-bit blocks (q4_0's rule); K must be a multiple of the block."""
    k, n = weight.shape
    if k % block_size:
        raise ValueError(f"K={k} is not a multiple of the block size {block_size}")
    blocks = weight.T.astype(np.float32).reshape(n, k // block_size, block_size)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)[..., 0]
    scales = peak / -8.0
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
    codes = np.clip(np.floor(blocks * inverse[..., None] + 8.5), 0, 15).astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return NBitsBlocks(packed, scales.astype(np.float32), k, block_size)


def matmul_nbits_nodes(x: str, weight: str, b: NBitsBlocks, out: str, accuracy_level: int,
                       node_name: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """out = x @ W as MatMulNBits over `b` (plus the minimums branch for q4_1's blocks): the nodes
    and the initializers they read, named after the float weight `weight`."""
    codes, scales = f"{weight}.q{b.bits}", weight + ".scales"
    initializers = [numpy_helper.from_array(b.codes, codes), numpy_helper.from_array(b.scales.reshape(-1), scales)]
    inputs, codes_out = [x, codes, scales], out
    if b.mins is not None:
        # Zero points 0 (two per byte): the node computes x @ (d * c); the minimums are added after.
        zeros = np.zeros(b.n * -(-b.scales.shape[1] * b.bits // 8), np.uint8)
        initializers.append(numpy_helper.from_array(zeros, weight + ".zero_points"))
        inputs.append(weight + ".zero_points")
        codes_out = weight + ".codes_out"
    # Without zero_points MatMulNBits uses 2^(bits-1): 8 (q4_0's centre) or 128 (q8_0's codes + 128).
    nodes = [helper.make_node("MatMulNBits", inputs, [codes_out], name=f"{node_name}_Q{b.bits}", domain=MS_DOMAIN,
                              K=b.k, N=b.n, bits=b.bits, block_size=b.block_size, accuracy_level=accuracy_level)]
    if b.mins is not None:
        branch, branch_initializers = minimums_branch(x, weight, b, codes_out, out)
        nodes += branch
        initializers += branch_initializers
    return nodes, initializers


def write_matmul_nbits(proto: onnx.ModelProto, blocks: dict[str, NBitsBlocks],
                       accuracy_level: int) -> onnx.ModelProto:
    """Replace every MatMul whose weight initializer is named in `blocks` by MatMulNBits."""
    graph = proto.graph
    nodes, initializers = [], []
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else None
        if weight not in blocks:
            nodes.append(node)
            continue
        new_nodes, new_initializers = matmul_nbits_nodes(node.input[0], weight, blocks[weight], node.output[0],
                                                         accuracy_level, node.name or weight)
        nodes += new_nodes
        initializers += new_initializers
    # A weight another node still reads (the tied head, also the embedding's Transpose) stays.
    read = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name not in blocks or init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept + initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return proto


def minimums_branch(x: str, weight: str, b: NBitsBlocks, codes_out: str,
                    out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """out = codes_out + (x [B, T, K] summed over each block) @ mins^T: the `+ m` of w = d * c + m,
    exact in arithmetic (sum_k x_k (d c_k + m) = sum_k x_k d c_k + m sum_k x_k)."""
    n_blocks = b.k // b.block_size
    initializers = [
        numpy_helper.from_array(np.array([0, 0, n_blocks, b.block_size], np.int64), weight + ".block_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), weight + ".last_axis"),
        numpy_helper.from_array(np.ascontiguousarray(b.mins.T), weight + ".mins")]
    nodes = [helper.make_node("Reshape", [x, weight + ".block_shape"], [weight + ".x_blocks"]),
             helper.make_node("ReduceSum", [weight + ".x_blocks", weight + ".last_axis"], [weight + ".x_sums"],
                              keepdims=0),
             helper.make_node("MatMul", [weight + ".x_sums", weight + ".mins"], [weight + ".mins_out"]),
             helper.make_node("Add", [codes_out, weight + ".mins_out"], [out])]
    return nodes, initializers


def int8_blocks(weight: np.ndarray) -> NBitsBlocks:
    """W [K, N] as GGML q8_0 blocks of 32 along K, the very blocks `tinyllm quantize int8` stores."""
    rows = torch.from_numpy(np.ascontiguousarray(weight.T))
    return checkpoint_blocks(quantize_rtn(rows, make_scheme("int8", group_size=BLOCK)))


def block_weights(weights: dict[str, np.ndarray], quant: str) -> tuple[dict[str, NBitsBlocks], list[str]]:
    """`quant` (int8 or int4) blocks of every [K, N] weight whose K is a multiple of BLOCK, and
    the names of the weights that stay float32 (their K is not)."""
    make = int8_blocks if quant == "int8" else int4_blocks
    blocks = {name: make(w) for name, w in weights.items() if w.shape[0] % BLOCK == 0}
    return blocks, sorted(set(weights) - set(blocks))


def dequantized_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The float weight [K, N] each MatMulNBits of `proto` computes with, read back from its
    blocks, keyed by the float initializer's name (`model.layers.0.self_attn.qkv_proj.weight.T`)."""
    return {name: blocks.dequantize() for name, blocks in graph_blocks(proto).items()}


def graph_blocks(proto: onnx.ModelProto) -> dict[str, NBitsBlocks]:
    """The blocks of each MatMulNBits of `proto`, keyed as `dequantized_weights` keys them."""
    inits = {init.name: init for init in proto.graph.initializer}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    out = {}
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            scales = array(node.input[2]).reshape(attrs["N"], -1)
            name = node.input[1].rsplit(".q", 1)[0]
            mins = array(name + ".mins").T if name + ".mins" in inits else None
            out[name] = NBitsBlocks(array(node.input[1]), scales, attrs["K"], attrs["block_size"], attrs["bits"], mins)
    return out


def round_activations(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """`x` as MatMulNBits at accuracy level 4 sees it: each block of `block_size` values along the
    last axis rounded to int8 (MLAS `QuantizeARow_CompInt8`: scale max|x| / 127, multiplier
    127 / max|x|, round half to even), returned as floats (the codes times the scale)."""
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    peak = blocks.abs().amax(-1, keepdim=True)
    multiplier = torch.where(peak > 0, 127 / peak, torch.zeros_like(peak))
    return (torch.round(blocks * multiplier) * (peak / 127)).reshape(x.shape)


def graph_modules(name: str) -> list[str]:
    """The model's linear layers a graph weight (`….weight.T`) holds: the fused graph's packed
    `qkv_proj` is q, k and v, in that order."""
    module = name.removesuffix(".weight.T").removeprefix("model.")
    if ".qkv_proj" in module:
        return [module.replace("qkv_proj", f"{part}_proj") for part in "qkv"]
    return [module]


@contextmanager
def level4_rounding(model: torch.nn.Module, blocks: dict[str, NBitsBlocks]) -> Iterator[torch.nn.Module]:
    """`model` computing each linear layer whose weight `blocks` holds (by graph name) as
    MatMulNBits at accuracy level 4 does: on its input rounded per block (`round_activations`),
    except for q4_1's minimums, which the graph's float side branch applies to the unrounded
    input. The model of a level-4 graph that export validation holds the graph to."""
    def layer(block: int, mins: torch.Tensor | None):
        def forward(module, args, _):
            x = args[0]
            rounded = round_activations(x, block)
            y = torch.nn.functional.linear(rounded, module.weight)
            return y if mins is None else y + torch.nn.functional.linear(x - rounded, mins)
        return forward

    hooks = []
    for name, b in blocks.items():
        modules = [model.get_submodule(m) for m in graph_modules(name)]
        rows = np.cumsum([m.out_features for m in modules])[:-1]
        mins = [None] * len(modules) if b.mins is None else [
            torch.from_numpy(np.repeat(part, b.block_size, axis=1)) for part in np.split(b.mins, rows)]
        hooks += [m.register_forward_hook(layer(b.block_size, mn)) for m, mn in zip(modules, mins)]
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()


def quantize_dynamic_int8(path: Path) -> dict:
    """Replace the float graph at `path` by onnxruntime's dynamic quantization of its MatMuls, as
    an onnxruntime user would make it; return the settings used."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_name("int8." + path.name)
    large = path.with_name(path.name + ".data").exists()
    # Its defaults but per-channel weights (as onnxruntime's docs advise for accuracy).
    # MatMulConstBOnly: attention's activation×activation MatMuls stay float.
    settings = {"op_types_to_quantize": ["MatMul"], "weight_type": "QInt8", "per_channel": True,
                "reduce_range": False, "extra_options": {"MatMulConstBOnly": True}}
    # The quantizer logs advice meant for vision models (run shape pre-processing) to the root logger.
    logging.disable(logging.WARNING)
    try:
        # DefaultTensorType: ONNX shape inference cannot type the outputs of com.microsoft ops.
        options = {**settings["extra_options"], "DefaultTensorType": onnx.TensorProto.FLOAT}
        quantize_dynamic(path, target, op_types_to_quantize=settings["op_types_to_quantize"],
                         weight_type=QuantType[settings["weight_type"]], per_channel=settings["per_channel"],
                         reduce_range=settings["reduce_range"], use_external_data_format=large, extra_options=options)
    finally:
        logging.disable(logging.NOTSET)
    save_model(onnx.load(str(target)), path)
    for leftover in (target, target.with_name(target.name + ".data")):
        leftover.unlink(missing_ok=True)
    return settings
