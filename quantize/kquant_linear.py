"""`KQuantLinear`: a K-quant (q2_k … q6_k) weight in the PyTorch runtime.

It keeps the codes unpacked (int8, one per value) with each sub-block's float32 step d*sc and
offset dmin*m, and computes with w = step * q - offset, GGML's own float32 arithmetic: the weight
PyTorch multiplies by is bit for bit the one `gguf.quants.dequantize` decodes from the exported
blocks. Every call dequantizes then runs one BLAS matmul (`dequant`, the one path it has); the
integer kernels in quantize/native.py read q8_0/q4_0/q4_1 blocks only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantize.kquants import KQuantWeight, dequantize_grid


class KQuantLinear(nn.Module):
    """y = x W^T for a K-quant W [N, K]; `rows` also serves embedding lookups (QuantEmbedding)."""

    path = "dequant"

    def __init__(self, qw: KQuantWeight):
        super().__init__()
        self.scheme = qw.scheme
        self.sub = qw.layout.sub
        self.out_features, self.in_features = qw.shape
        centred, steps, offsets = qw.grid()
        self.register_buffer("centred", centred)
        self.register_buffer("steps", steps)
        self.register_buffer("offsets", offsets)

    def rows(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Rows `idx` of W in float32 [..., K] (all of W without `idx`)."""
        if idx is None:
            return dequantize_grid(self.centred, self.steps, self.offsets, self.sub)
        return dequantize_grid(self.centred[idx], self.steps[idx],
                               None if self.offsets is None else self.offsets[idx], self.sub)

    def dequantized(self) -> torch.Tensor:
        return self.rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized())

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, {self.scheme.ggml_type}, {self.path}"
