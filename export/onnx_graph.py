"""The ONNX decoder graph: one graph for prefill and decode, with the KV cache as inputs/outputs.

`model.py` keeps its cache in preallocated buffers written in place, which an exported graph
cannot do; `DecoderGraph` wraps the same modules (same weights, same RMSNorm, rotate-half RoPE
and SwiGLU code) in a functional forward instead: the past keys/values come in, the new ones are
concatenated after them and go out as `present.*`. Positions come from `position_ids`, the
causal mask from the lengths (query t may see keys up to past + t) and `attention_mask` [batch,
past + seq] (0: a padding key no query sees), so a past of length 0 is an ordinary prefill.
Grouped-query attention stays grouped: the cache holds n_kv_heads heads and the query heads of a
group are folded into the sequence axis, never expanded copies of K/V.

This is the plain graph: every op standard ONNX, no head-size rules. The exporter writes the
fused graph (onnx_fused.py) wherever onnxruntime's fused ops take the model, and this one where
they do not or when asked (`--graph plain`).

Exported with PyTorch's TorchScript exporter (`dynamo=False`): it writes dynamic batch, sequence
and past axes from `dynamic_axes` without needing onnxscript, and keeps a zero-length past
dynamic (the dynamo exporter specialises 0/1-sized example dimensions).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from tinyllm.checkpoint import to_hf_names
from tinyllm.model import Transformer, apply_rope

INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"
PAST_KEY, PAST_VALUE = "past_key_values.%d.key", "past_key_values.%d.value"
PRESENT_KEY, PRESENT_VALUE = "present.%d.key", "present.%d.value"
# Past keys/values interleave per layer: layer 0 key, layer 0 value, layer 1 key, …
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GiB; well before that, weights go beside it
EXAMPLE_PAST = 3  # the traced example's past length; any length, 0 included, runs afterwards


def past_names(n_layers: int) -> list[str]:
    return [pattern % i for i in range(n_layers) for pattern in (PAST_KEY, PAST_VALUE)]


def present_names(n_layers: int) -> list[str]:
    return [pattern % i for i in range(n_layers) for pattern in (PRESENT_KEY, PRESENT_VALUE)]


class DecoderGraph(nn.Module):
    """(input_ids [B,T], attention_mask [B,P+T], position_ids [B,T], past k/v per layer
    [B,n_kv,P,hd]) → (logits [B,T,V], present k/v per layer [B,n_kv,P+T,hd])."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        c = model.config
        # The same frequencies as model.rope_tables, applied to arbitrary positions.
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor):
        m, c = self.model, self.model.config
        B, T = input_ids.shape
        angles = position_ids.unsqueeze(-1).float() * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)  # [B, 1, T, hd]
        cos, sin = angles.cos(), angles.sin()
        x = m.embed_tokens(input_ids)
        presents = []
        for i, block in enumerate(m.layers):
            attn = block.self_attn
            h = block.input_layernorm(x)
            q = attn.q_proj(h).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            y = self.attend(q, k, v, attention_mask)
            x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, c.n_heads * c.head_dim))
            x = x + block.mlp(block.post_attention_layernorm(x))
        return (m.lm_head(m.norm(x)), *presents)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Causal GQA attention of q [B,H,T,hd] over k, v [B,KV,S,hd] whose last T positions are q's,
        keys where attention_mask [B,S] is 0 left out."""
        c = self.model.config
        B, _, T, hd = q.shape
        S = k.shape[2]
        group = c.n_heads // c.n_kv_heads
        # Query head h uses kv head h // group (SDPA's enable_gqa): fold each group into rows.
        scores = torch.matmul(q.reshape(B, c.n_kv_heads, group * T, hd), k.transpose(2, 3)) / math.sqrt(hd)
        scores = scores.view(B, c.n_kv_heads, group, T, S)
        key_pos = torch.arange(S, device=q.device)
        query_pos = torch.arange(T, device=q.device) + (S - T)
        hidden = (key_pos.unsqueeze(0) > query_pos.unsqueeze(1)) | (attention_mask[:, None, None, None, :] == 0)
        # The most negative float, not -inf: a padding query that sees no key gets an even spread
        # instead of NaN, which its V products would carry into every later position.
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).view(B, c.n_kv_heads, group * T, S)
        return torch.matmul(probs, v).view(B, c.n_heads, T, hd)


def export_graph(model: Transformer, path: Path, opset: int) -> onnx.ModelProto:
    """Trace `model` into a float32 ONNX graph at `path` and return it (initializers renamed)."""
    c = model.config
    graph = DecoderGraph(model.cpu().eval()).eval()
    ids = torch.zeros(1, 2, dtype=torch.long)
    mask = torch.ones(1, EXAMPLE_PAST + 2, dtype=torch.long)
    positions = torch.arange(EXAMPLE_PAST, EXAMPLE_PAST + 2).unsqueeze(0)
    past = [torch.zeros(1, c.n_kv_heads, EXAMPLE_PAST, c.head_dim) for _ in range(2 * c.n_layers)]
    inputs = [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(c.n_layers)]
    outputs = [LOGITS, *present_names(c.n_layers)]
    axes = {INPUT_IDS: {0: "batch", 1: "seq"}, ATTENTION_MASK: {0: "batch", 1: "total_seq"},
            POSITION_IDS: {0: "batch", 1: "seq"}, LOGITS: {0: "batch", 1: "seq"}}
    axes |= {name: {0: "batch", 2: "past_seq"} for name in past_names(c.n_layers)}
    axes |= {name: {0: "batch", 2: "total_seq"} for name in present_names(c.n_layers)}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its deprecation and traces Python ints; both expected.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (ids, mask, positions, *past), str(path), dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    proto = onnx.load(str(path))
    name_weights(proto, model)
    save_model(proto, path)
    return proto


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write `proto` to `path`, its weights in `<name>.data` beside it when they are large."""
    large = sum(len(init.raw_data) for init in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    onnx.save_model(proto, str(path), save_as_external_data=large, location=data.name)


def name_weights(proto: onnx.ModelProto, model: Transformer) -> None:
    """Give the traced MatMul weights (`onnx::MatMul_123`, stored transposed [in, out]) the Hugging
    Face name of the tensor they hold plus `.T`, so a quantizer can map checkpoint tensors onto them."""
    state = to_hf_names(model.state_dict(), tied=False)  # the tied head keeps its own name here
    # Later names win: a tied head holds the embedding's bytes and should read as the head.
    by_bytes = {tensor.detach().T.contiguous().numpy().tobytes(): name + ".T"
                for name, tensor in state.items() if tensor.dim() == 2}
    renames = {}
    for init in proto.graph.initializer:
        if len(init.dims) == 2:
            name = by_bytes.get(numpy_helper.to_array(init).tobytes())
            if name and name not in renames.values():
                renames[init.name] = name
    for init in proto.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]


def matmul_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The constant [K, N] weights of the graph's MatMuls, by initializer name."""
    inits = {init.name: init for init in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            out[node.input[1]] = numpy_helper.to_array(inits[node.input[1]])
    return out
