"""GGML's K-quant super-blocks (q2_k … q6_k) as the storage form of a quantized weight.

A row is cut into super-blocks of 256 values, each cut into sub-blocks of 16 or 32. Every value
is a small integer code q; every sub-block has an integer scale sc (and, for the asymmetric
types, an integer minimum m); every super-block has a float16 d (and dmin). GGML computes

    w = (d * sc) * q - (dmin * m)        q2_k q4_k q5_k   (q >= 0)
    w = (d * sc) * q                     q3_k q6_k        (q centred: -4…3, -32…31)

in float32, in that order, and so does every runtime here (`grid` + `dequantize`).

Stored (safetensors, per weight <name>): `.codes` uint8 [N, nb * code bytes] — each
super-block's code bytes exactly as its GGML struct lays them out (q3_k's hmask+qs, q5_k's
qh+qs, q6_k's ql+qh, q2_k/q4_k's qs); `.scales` uint8 [N, nb * scale bytes] — the struct's
packed sub-block scales (and minimums: 4+4 bits for q2_k, 6+6 bits for q4_k/q5_k in
get_scale_min_k4's order, 6 bits for q3_k, int8 for q6_k); `.d` float16 [N, nb] and, asymmetric,
`.dmin` float16 [N, nb]. `ggml_blocks` interleaves the four per super-block in the struct's field
order: that is the GGUF tensor, byte for byte, and `gguf.quants.dequantize` decodes it to
`dequantize()`'s numbers exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType

from tinyllm.errors import TinyLLMError

QK_K = 256  # values per super-block


@dataclass(frozen=True)
class KLayout:
    """One K-quant type: its sub-blocks, code range and GGML struct."""

    name: str
    qtype: GGMLQuantizationType
    sub: int  # values per sub-block
    lo: int  # centred code range: q in lo..hi, stored as q - lo
    hi: int
    sc_lo: int  # integer sub-block scale range
    sc_hi: int
    has_min: bool
    code_bytes: int
    scale_bytes: int
    fields: tuple[str, ...]  # the struct's field order

    @property
    def nsub(self) -> int:
        return QK_K // self.sub

    @property
    def type_size(self) -> int:
        return self.code_bytes + self.scale_bytes + 2 * (2 if self.has_min else 1)

    @property
    def bits(self) -> int:
        return (self.hi - self.lo).bit_length()


LAYOUTS: dict[str, KLayout] = {k.name: k for k in (
    KLayout("q2_k", GGMLQuantizationType.Q2_K, 16, 0, 3, 0, 15, True, 64, 16, ("scales", "codes", "d", "dmin")),
    KLayout("q3_k", GGMLQuantizationType.Q3_K, 16, -4, 3, -32, 31, False, 96, 12, ("codes", "scales", "d")),
    KLayout("q4_k", GGMLQuantizationType.Q4_K, 32, 0, 15, 0, 63, True, 128, 12, ("d", "dmin", "scales", "codes")),
    KLayout("q5_k", GGMLQuantizationType.Q5_K, 32, 0, 31, 0, 63, True, 160, 12, ("d", "dmin", "scales", "codes")),
    KLayout("q6_k", GGMLQuantizationType.Q6_K, 16, -32, 31, -128, 127, False, 192, 16, ("codes", "scales", "d")),
)}


# -- codes ------------------------------------------------------------------------------------

def _bit_planes(values: torch.Tensor, bit: int) -> torch.Tensor:
    """[..., 8, 32] -> [..., 32]: byte l holds bit `bit` of value (s, l) at bit s (q3_k's hmask, q5_k's qh)."""
    planes = (values >> bit) & 1
    return sum(planes[..., s, :] << s for s in range(8))


def _crumbs(values: torch.Tensor) -> torch.Tensor:
    """[..., 2, 4, 32] 2-bit values -> [..., 2, 32]: byte l of half h holds value (h, s, l) at bits 2s."""
    return sum((values[..., s, :] & 3) << (2 * s) for s in range(4))


def pack_codes(layout: KLayout, q: torch.Tensor) -> torch.Tensor:
    """Centred codes int [N, K] -> the code bytes of each super-block, uint8 [N, nb * code_bytes]."""
    n, k = q.shape
    nb = k // QK_K
    u = (q.to(torch.int32) - layout.lo).view(n, nb, QK_K)
    if layout.name == "q2_k":
        out = [_crumbs(u.view(n, nb, 2, 4, 32))]
    elif layout.name == "q3_k":
        out = [_bit_planes(u.view(n, nb, 8, 32), 2), _crumbs(u.view(n, nb, 2, 4, 32))]
    elif layout.name in ("q4_k", "q5_k"):
        pairs = (u & 0xF).view(n, nb, 4, 2, 32)
        nibbles = pairs[..., 0, :] | (pairs[..., 1, :] << 4)
        out = ([_bit_planes(u.view(n, nb, 8, 32), 4)] if layout.name == "q5_k" else []) + [nibbles]
    else:  # q6_k: per 128-half, ql bytes 0-31 hold values 0-31 | 64-95, bytes 32-63 values 32-63 | 96-127
        halves = u.view(n, nb, 2, 4, 32)
        low = halves & 0xF
        ql = torch.stack([low[..., 0, :] | (low[..., 2, :] << 4), low[..., 1, :] | (low[..., 3, :] << 4)], dim=-2)
        out = [ql, _crumbs(halves >> 4)]
    return torch.cat([o.reshape(n, nb, -1) for o in out], dim=-1).to(torch.uint8).reshape(n, -1)


def unpack_codes(layout: KLayout, codes: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_codes`: centred codes int8 [N, K]."""
    n = codes.shape[0]
    b = codes.view(n, -1, layout.code_bytes).to(torch.int16)
    nb = b.shape[1]
    shifts2 = torch.arange(0, 8, 2, dtype=torch.int16)
    shifts1 = torch.arange(8, dtype=torch.int16)

    def crumbs(x):  # [n, nb, 64] -> [n, nb, 256]
        return ((x.view(n, nb, 2, 1, 32) >> shifts2.view(4, 1)) & 3).reshape(n, nb, QK_K)

    def planes(x):  # [n, nb, 32] -> [n, nb, 256]
        return ((x.view(n, nb, 1, 32) >> shifts1.view(8, 1)) & 1).reshape(n, nb, QK_K)

    if layout.name == "q2_k":
        u = crumbs(b)
    elif layout.name == "q3_k":
        u = crumbs(b[..., 32:]) | (planes(b[..., :32]) << 2)
    elif layout.name in ("q4_k", "q5_k"):
        nib = b[..., -128:].view(n, nb, 4, 1, 32)
        u = torch.cat([nib & 0xF, nib >> 4], dim=3).reshape(n, nb, QK_K)
        if layout.name == "q5_k":
            u = u | (planes(b[..., :32]) << 4)
    else:
        ql = b[..., :128].view(n, nb, 2, 2, 32)
        low = torch.stack([ql[..., 0, :] & 0xF, ql[..., 1, :] & 0xF, ql[..., 0, :] >> 4, ql[..., 1, :] >> 4], dim=3)
        u = low.reshape(n, nb, QK_K) | (crumbs(b[..., 128:]) << 4)
    return (u + layout.lo).to(torch.int8).reshape(n, nb * QK_K)


# -- sub-block scales and minimums ------------------------------------------------------------

def pack_scales(layout: KLayout, sc: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """Integer sub-block scales (and minimums) [N, nb, nsub] -> uint8 [N, nb * scale_bytes]."""
    n, nb, _ = sc.shape
    sc = sc.to(torch.int32)
    if layout.name == "q2_k":
        out = sc | (m.to(torch.int32) << 4)
    elif layout.name == "q6_k":
        out = sc & 0xFF
    elif layout.name == "q3_k":
        u = sc + 32
        low = u & 0xF
        high = sum(((u[..., 4 * g:4 * g + 4] >> 4) & 3) << (2 * g) for g in range(4))
        out = torch.cat([low[..., :8] | (low[..., 8:] << 4), high], dim=-1)
    else:  # q4_k / q5_k: get_scale_min_k4's 12 bytes
        m = m.to(torch.int32)
        out = torch.cat([sc[..., :4] | ((sc[..., 4:] >> 4) << 6), m[..., :4] | ((m[..., 4:] >> 4) << 6),
                         (sc[..., 4:] & 0xF) | ((m[..., 4:] & 0xF) << 4)], dim=-1)
    return out.to(torch.uint8).reshape(n, nb * layout.scale_bytes)


def unpack_scales(layout: KLayout, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inverse of `pack_scales`: int16 scales [N, nb, nsub] and minimums (or None)."""
    n = packed.shape[0]
    b = packed.view(n, -1, layout.scale_bytes).to(torch.int16)
    if layout.name == "q2_k":
        return b & 0xF, b >> 4
    if layout.name == "q6_k":
        return packed.view(n, -1, 16).view(torch.int8).to(torch.int16), None
    if layout.name == "q3_k":
        low = torch.cat([b[..., :8] & 0xF, b[..., :8] >> 4], dim=-1)
        high = torch.cat([(b[..., 8:] >> (2 * g)) & 3 for g in range(4)], dim=-1)
        return (low | (high << 4)) - 32, None
    sc = torch.cat([b[..., 0:4] & 63, (b[..., 8:12] & 0xF) | ((b[..., 0:4] >> 6) << 4)], dim=-1)
    m = torch.cat([b[..., 4:8] & 63, (b[..., 8:12] >> 4) | ((b[..., 4:8] >> 6) << 4)], dim=-1)
    return sc, m


# -- the stored weight ------------------------------------------------------------------------

@dataclass
class KQuantWeight:
    """One matrix [N, K] (K a multiple of 256) in a K-quant layout, as stored (see the module doc)."""

    layout: KLayout
    codes: torch.Tensor  # uint8 [N, nb * code_bytes]
    scales: torch.Tensor  # uint8 [N, nb * scale_bytes]
    d: torch.Tensor  # float16 [N, nb]
    dmin: torch.Tensor | None = None  # float16 [N, nb], asymmetric types

    @property
    def scheme(self) -> "KScheme":
        return KScheme(self.layout.name)

    @property
    def shape(self) -> tuple[int, int]:
        return self.d.shape[0], self.d.shape[1] * QK_K

    @classmethod
    def pack(cls, layout: KLayout, q: torch.Tensor, sc: torch.Tensor, m: torch.Tensor | None,
             d: torch.Tensor, dmin: torch.Tensor | None) -> "KQuantWeight":
        """From integers: centred codes [N, K], sub-block scales/minimums [N, nb, nsub], float16 d/dmin [N, nb]."""
        return cls(layout, pack_codes(layout, q), pack_scales(layout, sc, m), d.to(torch.float16).contiguous(),
                   dmin.to(torch.float16).contiguous() if layout.has_min else None)

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(centred codes int8 [N, K], d*sc float32 [N, K/sub], dmin*m float32 [N, K/sub] or None):
        w = (d*sc) * q - dmin*m, GGML's float32 arithmetic."""
        n, k = self.shape
        sc, m = unpack_scales(self.layout, self.scales)
        step = (self.d.float().unsqueeze(-1) * sc.float()).reshape(n, k // self.layout.sub)
        offset = None
        if self.layout.has_min:
            offset = (self.dmin.float().unsqueeze(-1) * m.float()).reshape(n, k // self.layout.sub)
        return unpack_codes(self.layout, self.codes), step, offset

    def dequantize(self) -> torch.Tensor:
        return dequantize_grid(*self.grid(), self.layout.sub)

    def blocks(self) -> np.ndarray:
        """The GGUF tensor data: uint8 [N, nb * type_size], GGML's block structs back to back."""
        n, k = self.shape
        nb = k // QK_K
        parts = {"codes": self.codes.view(n, nb, -1), "scales": self.scales.view(n, nb, -1),
                 "d": self.d.view(torch.uint8).view(n, nb, 2)}
        if self.dmin is not None:
            parts["dmin"] = self.dmin.view(torch.uint8).view(n, nb, 2)
        return torch.cat([parts[f] for f in self.layout.fields], dim=-1).reshape(n, -1).numpy()

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        out = {f"{name}.codes": self.codes.contiguous(), f"{name}.scales": self.scales.contiguous(),
               f"{name}.d": self.d.contiguous()}
        if self.dmin is not None:
            out[f"{name}.dmin"] = self.dmin.contiguous()
        return out

    @classmethod
    def from_tensors(cls, scheme: "KScheme", name: str, tensors: dict[str, torch.Tensor],
                     shape: tuple[int, int], where: str) -> "KQuantWeight":
        layout = scheme.layout
        parts = ("codes", "scales", "d") + (("dmin",) if layout.has_min else ())
        missing = [p for p in parts if f"{name}.{p}" not in tensors]
        if missing:
            raise TinyLLMError(f"{where}: missing tensor {name}.{missing[0]}; the quantized checkpoint is damaged")
        n, k = shape
        nb = k // QK_K
        expected = {"codes": ((n, nb * layout.code_bytes), torch.uint8),
                    "scales": ((n, nb * layout.scale_bytes), torch.uint8),
                    "d": ((n, nb), torch.float16), "dmin": ((n, nb), torch.float16)}
        for part in parts:
            t = tensors[f"{name}.{part}"]
            want_shape, want_dtype = expected[part]
            if tuple(t.shape) != want_shape or t.dtype != want_dtype:
                raise TinyLLMError(f"{where}: {name}.{part} is {t.dtype} {tuple(t.shape)}, config.json implies "
                                   f"{want_dtype} {want_shape}; the quantized checkpoint is damaged")
        return cls(layout, *(tensors[f"{name}.{p}"] for p in ("codes", "scales", "d")),
                   tensors[f"{name}.dmin"] if layout.has_min else None)


def dequantize_grid(q: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None, sub: int) -> torch.Tensor:
    """float32 [..., K] from centred codes [..., K] and per-sub-block step/offset [..., K/sub]."""
    lead, k = q.shape[:-1], q.shape[-1]
    w = q.reshape(*lead, k // sub, sub).float() * step.unsqueeze(-1)
    if offset is not None:
        w = w - offset.unsqueeze(-1)
    return w.reshape(*lead, k)


@dataclass(frozen=True)
class KScheme:
    """A K-quant type as recorded in config.json: {"format": "q4_k", "bits": 4, "super_block": 256, …}."""

    format: str

    @property
    def layout(self) -> KLayout:
        return LAYOUTS[self.format]

    @property
    def name(self) -> str:
        return self.format

    @property
    def ggml_type(self) -> str:
        return self.format

    @property
    def group_size(self) -> int:
        return self.layout.sub

    def to_dict(self) -> dict:
        layout = self.layout
        return {"format": self.format, "bits": layout.bits, "symmetric": not layout.has_min,
                "super_block": QK_K, "sub_block": layout.sub}

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[1] % QK_K:
            raise TinyLLMError(
                f"{name} has shape {tuple(shape)}: its rows of {shape[-1]} do not split into {self.format}'s "
                f"super-blocks of {QK_K}; pick a 32-block scheme (int8, int4), or `auto --target-bpw`, which "
                "gives such tensors the best 32-block type")
