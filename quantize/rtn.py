"""Round-to-nearest quantization, with each group's scale chosen exactly as GGML's reference
quantizers choose it (`quantize_row_q8_0_ref`, `_q4_0_ref`, `_q4_1_ref`): the codes and scales
are bit-identical to what `gguf.quants.quantize` (and so llama.cpp's converter) writes.

    q8_0  d = max|x| / 127                   c = round(x / d)               (half away from zero)
    q4_0  d = x[argmax|x|] / -8              c = min(15, trunc(x / d + 8.5))
    q4_1  d = (max x - min x) / 15, m = min  c = min(15, trunc((x - m) / d + 0.5))

`group_params` and `encode` are shared with the calibrated method, which picks codes column by
column against the same grid. The K-quants' round to nearest is llama.cpp's quantize_row_qX_K_ref
(quantize/kquant_search.py).
"""

from __future__ import annotations

import torch

from quantize.kquant_search import quantize_k
from quantize.kquants import KQuantWeight, KScheme
from quantize.schemes import QuantizedWeight, Scheme, pack_int4


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (half away from zero) spelled as ggml's Python twin spells it, for bit-equality."""
    a = x.abs()
    floored = a.floor()
    return x.sign() * (floored + (2 * (a - floored)).floor())


def group_params(groups: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per group (last dim of `groups`): float32 scale d and, asymmetric, minimum m."""
    if scheme.bits == 8:
        return groups.abs().amax(-1) / 127, None
    if scheme.asym:
        lo, hi = groups.amin(-1), groups.amax(-1)
        return (hi - lo) / 15, lo
    peak = groups.gather(-1, groups.abs().argmax(-1, keepdim=True)).squeeze(-1)
    return peak / -8, None


def encode(x: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, scheme: Scheme) -> torch.Tensor:
    """Codes of values `x` on the grid (d, m) broadcast against it: int8 for 8 bits, else 0..15 (uint8)."""
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    if scheme.bits == 8:
        return _roundf(x * inv).to(torch.int8)
    if scheme.asym:
        return torch.trunc((x - m) * inv + 0.5).clamp(0, 15).to(torch.uint8)
    return torch.trunc(x * inv + 8.5).clamp(0, 15).to(torch.uint8)


def store(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, scheme: Scheme) -> QuantizedWeight:
    """Codes [N, K] and per-group d, m [N, K/group] as the stored form (packed, float16)."""
    packed = pack_int4(codes) if scheme.bits == 4 else codes
    return QuantizedWeight(scheme, packed, d.to(torch.float16),
                           m.to(torch.float16) if m is not None else None)


def quantize_rtn(weight: torch.Tensor, scheme: Scheme | KScheme) -> QuantizedWeight | KQuantWeight:
    """Round-to-nearest quantization of a float matrix [N, K] (K a multiple of the group size)."""
    if isinstance(scheme, KScheme):
        return quantize_k(weight, scheme.layout)
    n, k = weight.shape
    groups = weight.detach().float().reshape(n, k // scheme.group_size, scheme.group_size)
    d, m = group_params(groups, scheme)
    codes = encode(groups, d.unsqueeze(-1), m.unsqueeze(-1) if m is not None else None, scheme)
    return store(codes.reshape(n, k), d, m, scheme)
