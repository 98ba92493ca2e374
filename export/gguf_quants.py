"""GGML block encoders: every tensor type `tinyllm-export gguf` writes, as bytes llama.cpp reads.

F32/F16 are plain casts; BF16 and the 32-wide block types (q8_0, q4_0, q4_1, q5_0, q5_1) use the
`gguf` package's reference encoders. The K-quants (q4_k, q5_k, q6_k: 256-wide super-blocks) are
ours, so that calibrated weights can later be encoded the same way instead of going through
`llama-quantize`. Each encoder picks per-sub-block scales by a small least-squares search (the
idea of ggml's make_qkx2_quants / make_qx_quants, unweighted), then packs the bytes exactly as
`block_q4_K` / `block_q5_K` / `block_q6_K` lay them out; `gguf.quants.dequantize` decodes them.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

QK_K = 256
_CANDIDATES = np.arange(-10, 11, dtype=np.float32) * 0.1  # scale search steps, around nmax


def block_size(qtype: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def fits(row_length: int, qtype: GGMLQuantizationType) -> bool:
    """Whether rows of this length split into whole blocks of `qtype` (GGML blocks run along rows)."""
    return row_length % block_size(qtype) == 0


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _fit_asymmetric(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of x [..., n]: scale s >= 0 and offset m <= 0 with x ≈ s*q + m, q in 0..nmax."""
    lo = np.minimum(x.min(-1, keepdims=True), 0.0)  # ggml keeps the offset <= 0
    span = x.max(-1, keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    best_s, best_m = span / nmax, lo
    best_err = np.full(lo.shape, np.inf, dtype=np.float32)
    n = x.shape[-1]
    for step in _CANDIDATES:
        q = np.clip(np.rint((x - lo) * ((nmax + step) / safe)), 0, nmax)
        # Least squares for (s, m) given q; refit s alone where m would turn positive.
        sq, sx, sqq, sqx = q.sum(-1, keepdims=True), x.sum(-1, keepdims=True), \
            (q * q).sum(-1, keepdims=True), (q * x).sum(-1, keepdims=True)
        det = n * sqq - sq * sq
        ok = det > 0
        s = np.where(ok, (n * sqx - sq * sx) / np.where(ok, det, 1.0), 0.0)
        m = np.where(ok, (sx - s * sq) / n, lo)
        pos = m > 0
        s = np.where(pos, sqx / np.maximum(sqq, 1e-30), s)
        m = np.where(pos, 0.0, m)
        s = np.maximum(s, 0.0)
        err = ((s * q + m - x) ** 2).sum(-1, keepdims=True)
        better = err < best_err
        best_s, best_m, best_err = np.where(better, s, best_s), np.where(better, m, best_m), \
            np.where(better, err, best_err)
    return best_s[..., 0], best_m[..., 0]


def _fit_symmetric(x: np.ndarray, nmax: int) -> np.ndarray:
    """Per row of x [..., n]: a signed scale s with x ≈ s*q, q in -nmax..nmax-1 (ggml's asymmetric
    range: the largest-magnitude value maps to -nmax)."""
    idx = np.abs(x).argmax(-1)[..., None]
    peak = np.take_along_axis(x, idx, -1)
    safe = np.where(peak != 0, peak, 1.0)
    best_s = np.zeros(peak.shape, dtype=np.float32)
    best_err = np.full(peak.shape, np.inf, dtype=np.float32)
    for step in _CANDIDATES:
        q = np.clip(np.rint(x * (-(nmax + step) / safe)), -nmax, nmax - 1)
        s = (q * x).sum(-1, keepdims=True) / np.maximum((q * q).sum(-1, keepdims=True), 1e-30)
        err = ((s * q - x) ** 2).sum(-1, keepdims=True)
        better = err < best_err
        best_s, best_err = np.where(better, s, best_s), np.where(better, err, best_err)
    return np.where(peak != 0, best_s, 0.0)[..., 0]


def _super_scale(values: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize per-sub-block scales [n, k] (all >= 0) to 0..levels against one f16 scale per block."""
    d = _f16(values.max(-1) / levels)
    q = np.clip(np.rint(values / np.where(d > 0, d, 1.0)[:, None]), 0, levels).astype(np.uint8)
    return d, q


def _pack_scales_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min packing of block_q4_K and block_q5_K (8 of each per block)."""
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out


def _asymmetric_k(blocks: np.ndarray, nmax: int) -> tuple[np.ndarray, ...]:
    """Shared part of q4_k/q5_k: codes [n, 8, 32] in 0..nmax and the packed header."""
    x = blocks.reshape(-1, 8, 32)
    s, m = _fit_asymmetric(x, nmax)
    d, sc = _super_scale(s, 63)
    dmin, mn = _super_scale(-m, 63)
    step = (d[:, None] * sc)[..., None]
    offset = (dmin[:, None] * mn)[..., None]
    q = np.clip(np.rint((x + offset) / np.where(step > 0, step, 1.0)), 0, nmax).astype(np.uint8)
    q = np.where(step > 0, q, 0).astype(np.uint8)
    header = np.concatenate([d.astype(np.float16)[:, None].view(np.uint8),
                             dmin.astype(np.float16)[:, None].view(np.uint8),
                             _pack_scales_k4(sc, mn)], axis=1)
    return q, header


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Low 4 bits of codes [n, 8, 32] packed two sub-blocks per 32 bytes (low, then high nibble)."""
    low = q & 0x0F
    return (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(q.shape[0], 128)


def encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    q, header = _asymmetric_k(blocks, 15)
    return np.concatenate([header, _nibbles(q)], axis=1)


def encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    q, header = _asymmetric_k(blocks, 31)
    high = (q >> 4) & 1  # bit i of qh[l] is the fifth bit of sub-block i, element l
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(1).astype(np.uint8)
    return np.concatenate([header, qh, _nibbles(q)], axis=1)


def encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    s = _fit_symmetric(x, 32)
    peak = np.take_along_axis(s, np.abs(s).argmax(-1)[:, None], -1)[:, 0]
    inv = np.where(peak != 0, -128.0 / np.where(peak != 0, peak, 1.0), 0.0)
    sc = np.clip(np.rint(s * inv[:, None]), -128, 127).astype(np.int8)
    d = _f16(np.where(inv != 0, 1.0 / np.where(inv != 0, inv, 1.0), 0.0))
    step = (d[:, None] * sc.astype(np.float32))[..., None]
    q = np.clip(np.rint(x / np.where(step != 0, step, 1.0)), -32, 31)
    q = (np.where(step != 0, q, 0) + 32).astype(np.uint8).reshape(n, 8, 32)
    # Group g of 32 codes: low nibbles in ql half g//4, nibble (g//2)%2, bytes (g%2)*32…;
    # high two bits in qh half g//4 at bit 2*(g%4).
    ql = np.empty((n, 2, 2, 2, 32), dtype=np.uint8)
    qh = np.zeros((n, 2, 32), dtype=np.uint8)
    for g in range(8):
        h, nib, part = g // 4, (g // 2) % 2, g % 2
        ql[:, h, nib, part] = q[:, g] & 0x0F
        qh[:, h] |= (q[:, g] >> 4) << (2 * (g % 4))
    ql = (ql[:, :, 0] | (ql[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate([ql, qh.reshape(n, 64), sc.view(np.uint8), d.astype(np.float16)[:, None].view(np.uint8)],
                          axis=1)


_K_ENCODERS = {
    GGMLQuantizationType.Q4_K: encode_q4_k,
    GGMLQuantizationType.Q5_K: encode_q5_k,
    GGMLQuantizationType.Q6_K: encode_q6_k,
}


def encode(array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """A float32 matrix [rows, cols] as `qtype`: float arrays for F32/F16, else uint8 [rows, bytes]."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == GGMLQuantizationType.F32:
        return array
    if qtype == GGMLQuantizationType.F16:
        return array.astype(np.float16)
    if not fits(array.shape[-1], qtype):
        raise ValueError(f"rows of {array.shape[-1]} do not split into {qtype.name} blocks")
    if qtype in _K_ENCODERS:
        rows = array.shape[0]
        return _K_ENCODERS[qtype](array.reshape(-1, QK_K)).reshape(rows, -1)
    return quants.quantize(array, qtype)
