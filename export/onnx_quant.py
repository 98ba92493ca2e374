"""Quantized ONNX graphs: onnxruntime dynamic INT8, and weight-only INT4 as `MatMulNBits`.

INT8 is onnxruntime's own dynamic quantization: INT8 weights, activations quantized at run time
(`DynamicQuantizeLinear` + `MatMulInteger`), on the CPU execution provider.

INT4 is written here rather than by onnxruntime's `MatMulNBitsQuantizer` (which needs onnx_ir,
not a dependency) in two separate steps, so that blocks made elsewhere can be written unchanged:
`int4_blocks` rounds a float weight to symmetric 4-bit blocks of 32 along K — GGML's `q4_0` rule,
scale = the block's largest-magnitude value / -8, codes 0…15 around 8, the same codes and scales
onnxruntime's quantizer produces — and `write_matmul_nbits` replaces each float MatMul by a
`com.microsoft` `MatMulNBits` carrying whatever `Int4Blocks` it is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx_graph import matmul_weights, save_model

INT4_BLOCK = 32
# MatMulNBits accuracy_level 4: activations quantized to int8 per block, so the CPU kernels use
# int8 dot products (AVX2/AVX512-VNNI, NEON dot). Level 0 computes in float32 and is slower on CPU.
INT4_ACCURACY_LEVEL = 4
MS_DOMAIN = "com.microsoft"


@dataclass
class Int4Blocks:
    """One weight W [K, N] (MatMul's B) as symmetric 4-bit blocks along K, in MatMulNBits layout.

    codes:  uint8 [N, K / block, block / 2], two codes per byte, the lower K index in the low nibble;
            a code c stands for (c - 8) * scale.
    scales: float32 [N, K / block].
    """

    codes: np.ndarray
    scales: np.ndarray
    k: int
    block_size: int = INT4_BLOCK

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    def dequantize(self) -> np.ndarray:
        """The float weight [K, N] these blocks stand for."""
        low, high = self.codes & 0x0F, self.codes >> 4
        codes = np.stack([low, high], axis=-1).reshape(self.n, -1, self.block_size).astype(np.float32)
        return ((codes - 8.0) * self.scales[..., None]).reshape(self.n, self.k).T


def int4_blocks(weight: np.ndarray, block_size: int = INT4_BLOCK) -> Int4Blocks:
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
    return Int4Blocks(packed, scales.astype(np.float32), k, block_size)


def write_matmul_nbits(proto: onnx.ModelProto, blocks: dict[str, Int4Blocks],
                       accuracy_level: int = INT4_ACCURACY_LEVEL) -> onnx.ModelProto:
    """Replace every MatMul whose weight initializer is named in `blocks` by MatMulNBits (4 bits)."""
    graph = proto.graph
    nodes = []
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else None
        if weight not in blocks:
            nodes.append(node)
            continue
        b = blocks[weight]
        graph.initializer.extend([numpy_helper.from_array(b.codes, weight + ".q4"),
                                  numpy_helper.from_array(b.scales.reshape(-1), weight + ".scales")])
        # No zero_points input: MatMulNBits then uses 2^(bits-1) = 8, the symmetric centre.
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], weight + ".q4", weight + ".scales"], list(node.output),
            name=(node.name or weight) + "_Q4", domain=MS_DOMAIN, K=b.k, N=b.n, bits=4,
            block_size=b.block_size, accuracy_level=accuracy_level))
    kept = [init for init in graph.initializer if init.name not in blocks]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return proto


def quantize_int4(proto: onnx.ModelProto, accuracy_level: int = INT4_ACCURACY_LEVEL) -> list[str]:
    """Round every MatMul weight whose K is a multiple of 32 to 4-bit blocks and write MatMulNBits
    in place; return the names of the weights left float32 (their K is not)."""
    weights = matmul_weights(proto)
    blocks = {name: int4_blocks(w) for name, w in weights.items() if w.shape[0] % INT4_BLOCK == 0}
    write_matmul_nbits(proto, blocks, accuracy_level)
    return sorted(set(weights) - set(blocks))


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
            blocks = Int4Blocks(array(node.input[1]), scales, attrs["K"], attrs["block_size"])
            out[node.input[1].removesuffix(".q4")] = blocks.dequantize()
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
        # MatMulConstBOnly: attention's activation×activation MatMuls stay float.
        quantize_dynamic(path, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=True, use_external_data_format=large,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        logging.disable(logging.NOTSET)
    save_model(onnx.load(str(target)), path)
    for leftover in (target, target.with_name(target.name + ".data")):
        leftover.unlink(missing_ok=True)
