"""The fused ONNX decoder graph: the graph onnxruntime-genai's model builder writes for Llama on CPU.

Written node by node with `onnx.helper`, one function per piece, as the builder's `make_*`
methods do (onnxruntime_genai/models/builders/base.py), for this one architecture:

    input_ids [batch, seq] ─ embedding (Gather) ─┐
    attention_mask [batch, total] ─ seqlens_k = sum - 1, total_sequence_length (int32)
    per layer:  SimplifiedLayerNormalization (first) / SkipSimplifiedLayerNormalization (the
                residual add and RMSNorm in one node) → one packed q|k|v MatMul →
                com.microsoft GroupQueryAttention (rotary inside: cos/sin caches, rotate-half;
                past and present may share one buffer) → o_proj → SkipSimplifiedLayerNorm →
                SwiGLU (gate, up, Sigmoid·Mul·Mul, down)
    final SkipSimplifiedLayerNormalization → lm_head → logits [batch, seq, vocab]

No position_ids input: GroupQueryAttention numbers the new tokens from each row's past length
(seqlens_k), and takes a batch's prompts padded at the end, as onnxruntime-genai lays them out.
Weights are float32 [K, N] MatMul initializers or `NBitsBlocks` (MatMulNBits, see
onnx_quant.py), whatever the caller hands in, by graph name.

GroupQueryAttention has rules of its own (`fused_graph_problem`); where a model breaks them the
exporter writes the plain graph of onnx_graph.py instead.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx_graph import ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE
from export.onnx_quant import MS_DOMAIN, NBitsBlocks, matmul_nbits_nodes
from tinyllm.config import ModelConfig
from tinyllm.model import rope_tables
# onnxruntime 1.32's GroupQueryAttention refuses other head sizes at run time: "head_size must be
# a multiple of 8", and with do_rotary "head_size shall be a multiple of 16" (probed: 16, 32, 48,
# 64, 80, 96, 128 and 256 run and match PyTorch; 2-12, 20, 24 and 40 are refused).
GQA_HEAD_SIZE_MULTIPLE = 16

Weight = np.ndarray | NBitsBlocks  # a float [K, N] MatMul weight, or its quantized blocks


def fused_graph_problem(config: ModelConfig) -> str | None:
    """Why the fused graph cannot hold `config`, or None when it can."""
    if config.head_dim % GQA_HEAD_SIZE_MULTIPLE:
        return (f"head_dim {config.head_dim} is not a multiple of {GQA_HEAD_SIZE_MULTIPLE}, which "
                "GroupQueryAttention's CPU kernel needs")
    return None


class GraphWriter:
    """Collects nodes and initializers; names each node and output after its place in the model.
    Float constants are stored in `float_type`, the graph's activation type."""

    def __init__(self, float_type: type = np.float32):
        self.float_type = np.dtype(float_type)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: set[str] = set()

    def constant(self, name: str, value: np.ndarray) -> str:
        if name not in self.names:
            self.names.add(name)
            if value.dtype.kind == "f":
                value = np.ascontiguousarray(value, self.float_type)
            self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def blocks(self, b: NBitsBlocks) -> NBitsBlocks:
        """`b` with its scales (and minimums) in the activation type, as MatMulNBits requires."""
        if self.float_type == np.float32:
            return b
        mins = None if b.mins is None else b.mins.astype(self.float_type)
        return replace(b, scales=b.scales.astype(self.float_type), mins=mins)

    def node(self, op: str, inputs: list[str], scope: str, outputs: int | list[str] = 1, domain: str = "",
             **attrs) -> list[str]:
        names = outputs if isinstance(outputs, list) else [f"{scope}/output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=scope, domain=domain, **attrs))
        return names

    def add(self, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> None:
        self.nodes.extend(nodes)
        self.initializers.extend(initializers)


def attention_mask_lengths(g: GraphWriter) -> tuple[str, str]:
    """GroupQueryAttention's seqlens_k (each row's valid length - 1) and total_sequence_length,
    computed from the attention mask as the builder's attn_mask_reformat subgraph does."""
    one = g.constant("/model/constants/INT64/[1]", np.array([1], np.int64))
    total = g.node("ReduceSum", [ATTENTION_MASK, one], "/model/attn_mask/ReduceSum", keepdims=0)[0]
    seqlens = g.node("Sub", [total, one], "/model/attn_mask/Sub")[0]
    seqlens = g.node("Cast", [seqlens], "/model/attn_mask/seqlens_k", to=TensorProto.INT32)[0]
    shape = g.node("Shape", [ATTENTION_MASK], "/model/attn_mask/Shape")[0]
    axis1 = g.constant("/model/constants/INT64/1", np.array(1, np.int64))
    length = g.node("Gather", [shape, axis1], "/model/attn_mask/Gather", axis=0)[0]
    length = g.node("Cast", [length], "/model/attn_mask/total_sequence_length", to=TensorProto.INT32)[0]
    return seqlens, length


def matmul(g: GraphWriter, x: str, name: str, weight: Weight, scope: str, accuracy_level: int,
           out: str | None = None) -> str:
    """x @ W: a MatMul over a float initializer, or MatMulNBits over blocks."""
    out = out or f"{scope}/output_0"
    if isinstance(weight, NBitsBlocks):
        g.add(*matmul_nbits_nodes(x, name, g.blocks(weight), out, accuracy_level, scope))
    else:
        g.node("MatMul", [x, g.constant(name, weight)], scope, [out])
    return out


def pack_columns(weights: list[Weight]) -> Weight | None:
    """One weight whose output columns are those of `weights` side by side (q|k|v), or None when
    they are stored differently (float next to blocks, other bits or block sizes)."""
    if all(isinstance(w, np.ndarray) for w in weights):
        return np.concatenate(weights, axis=1)
    if not all(isinstance(w, NBitsBlocks) for w in weights):
        return None
    first = weights[0]
    if any((w.k, w.bits, w.block_size, w.mins is None) != (first.k, first.bits, first.block_size, first.mins is None)
           for w in weights):
        return None
    mins = None if first.mins is None else np.concatenate([w.mins for w in weights])
    return NBitsBlocks(np.concatenate([w.codes for w in weights]), np.concatenate([w.scales for w in weights]),
                       first.k, first.block_size, first.bits, mins)


def embedding(g: GraphWriter, weights: dict[str, Weight]) -> str:
    """The token lookup. Without a table of its own the embedding is the tied head's weight:
    a float head is stored once, as its [d, V] MatMul weight, and the table is its transpose
    (folded by onnxruntime at load), the builder's layout; a head in blocks (a quantized
    checkpoint's tied embedding) is looked up by GatherBlockQuantized on its codes, which
    dequantizes a row exactly as PyTorch's quantized embedding does."""
    table = weights.get("model.embed_tokens.weight")
    if table is not None:
        return g.node("Gather", [g.constant("model.embed_tokens.weight", table), INPUT_IDS],
                      "/model/embed_tokens/Gather")[0]
    head = weights["lm_head.weight.T"]
    if isinstance(head, np.ndarray):
        table = g.node("Transpose", [g.constant("lm_head.weight.T", head)], "/model/embed_tokens/Transpose",
                       perm=[1, 0])[0]
        return g.node("Gather", [table, INPUT_IDS], "/model/embed_tokens/Gather")[0]
    # The names lm_head's MatMulNBits gives its codes and scales (onnx_quant.matmul_nbits_nodes).
    shape = g.constant("/model/embed_tokens/codes_shape", np.array([head.n, head.k * head.bits // 8], np.int64))
    codes = g.node("Reshape", [f"lm_head.weight.T.q{head.bits}", shape], "/model/embed_tokens/Reshape")[0]
    scales_shape = g.constant("/model/embed_tokens/scales_shape", np.array(head.scales.shape, np.int64))
    scales = g.node("Reshape", ["lm_head.weight.T.scales", scales_shape], "/model/embed_tokens/Reshape_scales")[0]
    return g.node("GatherBlockQuantized", [codes, INPUT_IDS, scales], "/model/embed_tokens/GatherBlockQuantized",
                  domain=MS_DOMAIN, bits=head.bits, block_size=head.block_size, gather_axis=0, quantize_axis=1)[0]


def layernorm(g: GraphWriter, c: ModelConfig, x: str, residual: str | None, weight_name: str,
              weights: dict[str, Weight], scope: str) -> tuple[str, str]:
    """RMSNorm of x (+ residual): (normalized, the sum that is the next residual)."""
    gamma = g.constant(weight_name, weights[weight_name])
    if residual is None:
        out = g.node("SimplifiedLayerNormalization", [x, gamma], scope, axis=-1, epsilon=c.norm_eps,
                     stash_type=1)[0]
        return out, x
    out, _, _, summed = g.node("SkipSimplifiedLayerNormalization", [residual, x, gamma], scope,
                               [f"{scope}/output_0", "", "", f"{scope}/output_3"], domain=MS_DOMAIN,
                               epsilon=c.norm_eps)
    return out, summed


def attention(g: GraphWriter, c: ModelConfig, i: int, x: str, weights: dict[str, Weight], lengths: tuple[str, str],
              rotary: tuple[str, str], accuracy_level: int) -> str:
    """Packed q|k|v projection, GroupQueryAttention with rotary inside, o_proj."""
    prefix, scope = f"model.layers.{i}.self_attn", f"/model/layers.{i}/attn"
    parts = [weights[f"{prefix}.{p}_proj.weight.T"] for p in "qkv"]
    packed = pack_columns(parts)
    if packed is not None:
        qkv = matmul(g, x, f"{prefix}.qkv_proj.weight.T", packed, f"{scope}/qkv_proj/MatMul", accuracy_level)
    else:
        outs = [matmul(g, x, f"{prefix}.{p}_proj.weight.T", w, f"{scope}/{p}_proj/MatMul", accuracy_level)
                for p, w in zip("qkv", parts)]
        qkv = g.node("Concat", outs, f"{scope}/qkv_proj/Concat", axis=-1)[0]
    seqlens, total = lengths
    y = g.node("GroupQueryAttention", [qkv, "", "", PAST_KEY % i, PAST_VALUE % i, seqlens, total, *rotary],
               f"{scope}/GroupQueryAttention", [f"{scope}/GroupQueryAttention/output_0", PRESENT_KEY % i,
                                                PRESENT_VALUE % i], domain=MS_DOMAIN,
               num_heads=c.n_heads, kv_num_heads=c.n_kv_heads, scale=float(c.head_dim ** -0.5),
               local_window_size=-1, do_rotary=1, rotary_interleaved=0)[0]
    return matmul(g, y, f"{prefix}.o_proj.weight.T", weights[f"{prefix}.o_proj.weight.T"],
                  f"{scope}/o_proj/MatMul", accuracy_level)


def mlp(g: GraphWriter, i: int, x: str, weights: dict[str, Weight], accuracy_level: int) -> str:
    """SwiGLU: down(silu(gate(x)) * up(x)), silu spelled Sigmoid · Mul as the builder does."""
    prefix, scope = f"model.layers.{i}.mlp", f"/model/layers.{i}/mlp"
    gate, up = (matmul(g, x, f"{prefix}.{p}.weight.T", weights[f"{prefix}.{p}.weight.T"], f"{scope}/{p}/MatMul",
                       accuracy_level) for p in ("gate_proj", "up_proj"))
    sigmoid = g.node("Sigmoid", [gate], f"{scope}/act_fn/Sigmoid")[0]
    silu = g.node("Mul", [gate, sigmoid], f"{scope}/act_fn/Mul")[0]
    hidden = g.node("Mul", [silu, up], f"{scope}/Mul")[0]
    return matmul(g, hidden, f"{prefix}.down_proj.weight.T", weights[f"{prefix}.down_proj.weight.T"],
                  f"{scope}/down_proj/MatMul", accuracy_level)


def lm_head(g: GraphWriter, x: str, weights: dict[str, Weight], accuracy_level: int) -> str:
    return matmul(g, x, "lm_head.weight.T", weights["lm_head.weight.T"], "/lm_head/MatMul", accuracy_level,
                  out=LOGITS)


def rotary_caches(g: GraphWriter, c: ModelConfig) -> tuple[str, str]:
    """cos/sin [max_seq_len, head_dim / 2]: model.py's tables, whose two halves repeat."""
    cos, sin = rope_tables(c.head_dim, c.max_seq_len, c.rope_theta)
    half = c.head_dim // 2
    return (g.constant("cos_cache", np.ascontiguousarray(cos[:, :half].numpy())),
            g.constant("sin_cache", np.ascontiguousarray(sin[:, :half].numpy())))


def graph_io(c: ModelConfig, float_type: np.dtype) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    floats = helper.np_dtype_to_tensor_dtype(float_type)
    kv = ["batch_size", c.n_kv_heads, "past_sequence_length", c.head_dim]
    present = ["batch_size", c.n_kv_heads, "total_sequence_length", c.head_dim]
    inputs = [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info(LOGITS, floats, ["batch_size", "sequence_length", c.vocab_size])]
    for i in range(c.n_layers):
        inputs += [helper.make_tensor_value_info(p % i, floats, kv) for p in (PAST_KEY, PAST_VALUE)]
        outputs += [helper.make_tensor_value_info(p % i, floats, present)
                    for p in (PRESENT_KEY, PRESENT_VALUE)]
    return inputs, outputs


def fused_graph(c: ModelConfig, weights: dict[str, Weight], opset: int, accuracy_level: int,
                float_type: type = np.float32) -> onnx.ModelProto:
    """The fused decoder for `c` holding `weights` (graph names: `….weight.T` [K, N] MatMul
    weights or their blocks, float norms, and the float embedding table unless the embedding is
    the tied head, see `embedding`), computing in `float_type`: float32, or float16 as the
    builder's CUDA graphs."""
    g = GraphWriter(float_type)
    lengths = attention_mask_lengths(g)
    rotary = rotary_caches(g, c)
    x = embedding(g, weights)
    residual = None
    for i in range(c.n_layers):
        h, residual = layernorm(g, c, x, residual, f"model.layers.{i}.input_layernorm.weight", weights,
                                f"/model/layers.{i}/input_layernorm")
        x = attention(g, c, i, h, weights, lengths, rotary, accuracy_level)
        h, residual = layernorm(g, c, x, residual, f"model.layers.{i}.post_attention_layernorm.weight", weights,
                                f"/model/layers.{i}/post_attention_layernorm")
        x = mlp(g, i, h, weights, accuracy_level)
    h, _ = layernorm(g, c, x, residual, "model.norm.weight", weights, "/model/norm")
    lm_head(g, h, weights, accuracy_level)
    inputs, outputs = graph_io(c, g.float_type)
    graph = helper.make_graph(g.nodes, "tinyllm-fused-decoder", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
                             producer_name="tinyllm")
