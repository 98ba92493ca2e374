"""Quantized ONNX graphs: onnxruntime dynamic INT8, weight-only INT4 as `MatMulNBits`, and the
blocks of a quantized checkpoint written into `MatMulNBits` unchanged.

INT8 is onnxruntime's own dynamic quantization: INT8 weights, activations quantized at run time
(`DynamicQuantizeLinear` + `MatMulInteger`), on the CPU execution provider.

INT4 is written here rather than by onnxruntime's `MatMulNBitsQuantizer` (which needs onnx_ir,
not a dependency) in two separate steps, so that blocks made elsewhere can be written unchanged:
`int4_blocks` rounds a float weight to symmetric 4-bit blocks of 32 along K — GGML's `q4_0` rule,
scale = the block's largest-magnitude value / -8, codes 0…15 around 8, the same codes and scales
onnxruntime's quantizer produces — and `write_matmul_nbits` replaces each float MatMul by a
`com.microsoft` `MatMulNBits` carrying whatever `NBitsBlocks` it is given.

A quantized checkpoint's blocks map onto MatMulNBits (w = scale * (code - zero point)) as:
    q8_0  w = d * c, c in -127…127   bits 8, code c + 128, default zero point 128
    q4_0  w = d * (c - 8)            bits 4, the same nibbles re-paired, default zero point 8
    q4_1  w = d * c + m              bits 4, zero point 0, plus (x summed per group) @ m
q4_1 has no single-node exact form: its zero point -m/d is not an integer, and as a float zero
point onnxruntime 1.32 computes weights 1 ulp off PyTorch's d * c + m for some values. Its
minimums therefore go in a small float side branch. Every stored number is copied bit for bit;
the float16 scales and minimums become float32 exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx_graph import save_model
from quantize.checkpoint import load_quantized, weight_shapes
from quantize.modules import QuantizedTransformer
from quantize.schemes import QuantizedWeight, Scheme, matmul_nbits
from tinyllm.checkpoint import WEIGHTS_FILE, read_tensors
from tinyllm.errors import TinyLLMError
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

INT4_BLOCK = 32
MS_DOMAIN = "com.microsoft"


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
    block_size: int = INT4_BLOCK
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


def int4_blocks(weight: np.ndarray, block_size: int = INT4_BLOCK) -> NBitsBlocks:
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


def int4_weights(weights: dict[str, np.ndarray]) -> tuple[dict[str, NBitsBlocks], list[str]]:
    """4-bit blocks of every [K, N] weight whose K is a multiple of 32, and the names of the
    weights that stay float32 (their K is not)."""
    blocks = {name: int4_blocks(w) for name, w in weights.items() if w.shape[0] % INT4_BLOCK == 0}
    return blocks, sorted(set(weights) - set(blocks))


def dequantized_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The float weight [K, N] each quantized MatMul of `proto` computes with, read back from the
    graph (MatMulNBits blocks, or quantize_dynamic's INT8 weight, scale and zero point), keyed by
    the float initializer's name (`model.layers.0.self_attn.q_proj.weight.T`)."""
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
            blocks = NBitsBlocks(array(node.input[1]), scales, attrs["K"], attrs["block_size"], attrs["bits"], mins)
            out[name] = blocks.dequantize()
        elif node.op_type == "MatMulInteger" and node.input[1] in inits:
            name = node.input[1].removesuffix("_quantized")  # quantize_dynamic's naming
            codes = array(node.input[1]).astype(np.float32) - array(node.input[3]).astype(np.float32)
            out[name] = codes * array(name + "_scale")
    return out


def quantize_int8(path: Path) -> None:
    """Replace the float graph at `path` by onnxruntime's dynamic quantization of its MatMuls."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = path.with_name("int8." + path.name)
    large = path.with_name(path.name + ".data").exists()
    # The quantizer logs advice meant for vision models (run shape pre-processing) to the root logger.
    logging.disable(logging.WARNING)
    try:
        # MatMulConstBOnly: attention's activation×activation MatMuls stay float. DefaultTensorType:
        # ONNX shape inference cannot type the outputs of com.microsoft ops (the fused graph's).
        quantize_dynamic(path, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=True, use_external_data_format=large,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.disable(logging.NOTSET)
    save_model(onnx.load(str(target)), path)
    for leftover in (target, target.with_name(target.name + ".data")):
        leftover.unlink(missing_ok=True)
