"""The model: a Llama-family decoder in plain PyTorch, read top to bottom.

RMSNorm, rotary position embeddings (Hugging Face's rotate-half convention), grouped-query
attention through `scaled_dot_product_attention`, a SwiGLU feed-forward, no biases, optional tied
embeddings, and a KV cache for incremental decoding. Module names follow Hugging Face's
`LlamaForCausalLM` (minus its `model.` prefix, which `checkpoint.py` adds), so weights map one
to one onto transformers, llama.cpp and onnxruntime.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyllm.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the activation dtype, as llama.cpp and transformers do.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [max_len, head_dim], laid out for rotate-half (both halves repeat)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer, preallocated to `max_len` positions.

    Shapes are [batch, n_kv_heads, max_len, head_dim]: grouped-query attention stays grouped in
    the cache. A forward pass writes its new positions where it is told and attends over the
    whole buffer under a mask, so every step has the same shapes whatever the position (what lets
    `torch.compile` capture one decode step for all of them, as gpt-fast does). `length`, the
    number of positions filled, is bookkeeping for `Transformer.forward` and its callers.
    """

    def __init__(self, config: ModelConfig, batch_size: int = 1, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.max_len = max_len or config.max_seq_len
        shape = (batch_size, config.n_kv_heads, self.max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.slots = torch.arange(self.max_len, device=device)
        self.length = 0

    def update(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store k, v ([B, n_kv, T, hd]) at positions `pos` ([T]); return the layer's whole key and
        value buffers and the mask [T, max_len] of what each new position may attend to: itself,
        the positions before it, nothing not yet written."""
        self.keys[layer].index_copy_(2, pos, k)
        self.values[layer].index_copy_(2, pos, v)
        return self.keys[layer], self.values[layer], self.slots <= pos[:, None]

    def reset(self) -> None:
        self.length = 0


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.d_model, config.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.d_model, config.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_heads * self.head_dim, config.d_model, bias=False)

    def forward(self, x, cos, sin, pos=None, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = None
        if cache is not None:
            k, v, mask = cache.update(layer, pos, k, v)
        y = self.attend(q, k, v, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def attend(self, q, k, v, mask):
        """softmax(q kᵀ / √d + mask) v per head, the kv heads shared by groups of query heads."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              enable_gqa=self.n_kv_heads != self.n_heads)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, pos=None, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, pos, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth so the stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T]; with a cache, positions continue after it."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.max_seq_len
        if start + T > min(limit, self.config.max_seq_len):
            raise ValueError(f"{start + T} positions exceed the context of {min(limit, self.config.max_seq_len)}")
        logits = self.forward_at(idx, torch.arange(start, start + T, device=idx.device), cache)
        if cache is not None:
            cache.length += T
        return logits

    def forward_at(self, idx: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The pass itself: tokens [B, T] at positions `pos` ([T], in range). It reads no Python
        state that changes from call to call, which is what a compiled decode step needs."""
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        x = self.embed_tokens(idx)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, pos, cache, i)
        return self.lm_head(self.norm(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)
