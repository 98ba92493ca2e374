"""Block quantization schemes and the storage form of a quantized weight.

A weight W [N, K] (N output rows, K inputs: the layout of nn.Linear, of GGML rows and of
MatMulNBits' B) is cut along K into groups of `group_size` values, each with a float16 scale d
(and a float16 minimum m for the asymmetric scheme):

    int8        codes c in [-127, 127], int8 [N, K]           w = d * c          GGML q8_0
    int4        codes c in 0..15, packed uint8 [N, K/2]        w = d * (c - 8)    GGML q4_0
    int4 --asym codes c in 0..15, packed uint8 [N, K/2]        w = d * c + m      GGML q4_1

4-bit codes are packed exactly as GGML packs a 32-value block: byte j of a block holds value j
in its low nibble and value j+16 in its high nibble, so a 32-wide group's codes plus its scale
are a `block_q4_0` byte for byte (`ggml_blocks`). A group of 64 or 128 is several GGML blocks
sharing one scale, which GGML stores by repeating it. MatMulNBits packs consecutive pairs
instead (value 2i low, 2i+1 high); `matmul_nbits` re-orders the nibbles of symmetric int4,
nothing else.

The K-quants (q2_k … q6_k, 256-value super-blocks) live in quantize/kquants.py; `make_scheme`,
`scheme_from_dict` and `weight_from_tensors` take either family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantize.kquants import LAYOUTS, KQuantWeight, KScheme
from tinyllm.errors import TinyLLMError

GGML_BLOCK = 32  # every GGML type used here packs 32 values per block
GROUP_SIZES = (32, 64, 128)  # what GGML (by repeating scales), MatMulNBits and torch's int4 kernel all take
# The schemes `tinyllm-quantize` takes: int8 = q8_0, int4 = q4_0 (--asym: q4_1), and the K-quants.
SCHEME_NAMES = ("int8", "int4", *LAYOUTS)
# Suffixes of the stored parts of a quantized tensor (anything else in the safetensors is float).
STORED_PARTS = (".codes", ".scales", ".mins", ".d", ".dmin")


@dataclass(frozen=True)
class Scheme:
    """How one tensor is quantized; small and JSON-able (it is recorded in config.json)."""

    bits: int  # 8 or 4
    asym: bool = False  # a float16 minimum per group (int4 only)
    group_size: int = 32

    @property
    def name(self) -> str:
        return f"int{self.bits}" + ("-asym" if self.asym else "")

    @property
    def ggml_type(self) -> str:
        return {(8, False): "q8_0", (4, False): "q4_0", (4, True): "q4_1"}[(self.bits, self.asym)]

    def to_dict(self) -> dict:
        return {"format": self.ggml_type, "bits": self.bits, "symmetric": not self.asym,
                "group_size": self.group_size}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "Scheme":
        try:
            return make_scheme(f"int{d['bits']}", asym=not d["symmetric"], group_size=d["group_size"])
        except (KeyError, TypeError) as e:
            raise TinyLLMError(f"{where}: quantization entry {d!r} lacks {e}; the checkpoint is damaged") from None

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Refuse a tensor whose input dimension does not split into whole groups."""
        if len(shape) != 2 or shape[1] % self.group_size:
            raise TinyLLMError(
                f"{name} has shape {tuple(shape)}: its input dimension {shape[-1]} is not a multiple of "
                f"the group size {self.group_size}; pick a --group-size that divides it (32 fits every "
                "tinyllm preset)")


def make_scheme(name: str, asym: bool = False, group_size: int = 32) -> Scheme | KScheme:
    if name not in SCHEME_NAMES:
        raise TinyLLMError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEME_NAMES)}")
    if name in LAYOUTS:
        if asym or group_size != 32:
            raise TinyLLMError(f"--asym and --group-size apply to int4/int8 only: {name}'s super-blocks fix their "
                               "own sub-blocks and minimums (GGML's layout)")
        return KScheme(name)
    if asym and name == "int8":
        raise TinyLLMError("--asym applies to int4 only (int8 is GGML q8_0, symmetric)")
    if group_size not in GROUP_SIZES:
        raise TinyLLMError(f"--group-size {group_size}: choose one of {', '.join(map(str, GROUP_SIZES))} "
                           "(the sizes GGML, onnxruntime MatMulNBits and PyTorch's int4 kernel all accept)")
    return Scheme(bits=int(name[3:]), asym=asym, group_size=group_size)


def format_scheme(fmt: str) -> Scheme | KScheme:
    """The scheme that writes GGML type `fmt` (q8_0, q4_0, q4_1, q2_k … q6_k) in 32-wide groups."""
    if fmt in LAYOUTS:
        return KScheme(fmt)
    return {"q8_0": Scheme(8), "q4_0": Scheme(4), "q4_1": Scheme(4, asym=True)}[fmt]


def scheme_from_dict(d: dict, where: str = "config.json") -> Scheme | KScheme:
    """A per-tensor entry of config.json's quantization section, of either family."""
    if isinstance(d, dict) and d.get("format") in LAYOUTS:
        return KScheme(d["format"])
    return Scheme.from_dict(d, where)


def weight_from_tensors(scheme: Scheme | KScheme, name: str, tensors: dict[str, torch.Tensor],
                        shape: tuple[int, int], where: str) -> "QuantizedWeight | KQuantWeight":
    cls = KQuantWeight if isinstance(scheme, KScheme) else QuantizedWeight
    return cls.from_tensors(scheme, name, tensors, shape, where)


@dataclass
class QuantizedWeight:
    """One quantized matrix as stored: codes (packed for 4 bits), float16 scales [N, K/group] and,
    asymmetric only, float16 minimums of the same shape."""

    scheme: Scheme
    codes: torch.Tensor  # int8 [N, K] (8 bits) or uint8 [N, K/2] (4 bits, GGML nibble order)
    scales: torch.Tensor
    mins: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        n, width = self.codes.shape
        return n, width * (2 if self.scheme.bits == 4 else 1)

    def unpacked(self) -> torch.Tensor:
        """Codes one per value, int16 [N, K] (0..15 for 4 bits, -127..127 for 8 bits)."""
        return unpack_int4(self.codes) if self.scheme.bits == 4 else self.codes.to(torch.int16)

    def centred(self) -> torch.Tensor:
        """The integer the scale multiplies, int8 [N, K]: c, c - 8 (q4_0) or c (q4_1)."""
        if self.scheme.bits == 8:
            return self.codes
        codes = unpack_int4(self.codes)
        return (codes if self.scheme.asym else codes - 8).to(torch.int8)

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float32 [N, K] (or only `rows`) as d * centred (+ m): the numbers every runtime computes with."""
        n, k = self.shape
        g = self.scheme.group_size
        centred, scales, mins = self.centred(), self.scales, self.mins
        if rows is not None:
            centred, scales = centred[rows], scales[rows]
            mins = mins[rows] if mins is not None else None
        lead = centred.shape[:-1]
        w = centred.view(*lead, k // g, g).float() * scales.float().unsqueeze(-1)
        if mins is not None:
            w = w + mins.float().unsqueeze(-1)
        return w.view(*lead, k)

    def blocks(self) -> np.ndarray:
        """The GGUF tensor data (`ggml_blocks`)."""
        return ggml_blocks(self)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The safetensors entries of this weight under `name` (the float tensor's own name)."""
        out = {f"{name}.codes": self.codes.contiguous(), f"{name}.scales": self.scales.contiguous()}
        if self.mins is not None:
            out[f"{name}.mins"] = self.mins.contiguous()
        return out

    @classmethod
    def from_tensors(cls, scheme: Scheme, name: str, tensors: dict[str, torch.Tensor],
                     shape: tuple[int, int], where: str) -> "QuantizedWeight":
        try:
            qw = cls(scheme, tensors[f"{name}.codes"], tensors[f"{name}.scales"],
                     tensors.get(f"{name}.mins") if scheme.asym else None)
        except KeyError as e:
            raise TinyLLMError(f"{where}: missing tensor {e.args[0]}; the quantized checkpoint is damaged") from None
        n, k = shape
        expected = {"codes": (n, k // 2 if scheme.bits == 4 else k), "scales": (n, k // scheme.group_size)}
        if scheme.asym:
            expected["mins"] = expected["scales"]
        for part, want in expected.items():
            got = tuple(getattr(qw, part).shape)
            if got != want:
                raise TinyLLMError(f"{where}: {name}.{part} has shape {got}, config.json implies {want}")
        return qw


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] codes 0..15 -> uint8 [N, K/2], GGML order within each 32-value block."""
    n, k = codes.shape
    blocks = codes.to(torch.uint8).view(n, k // GGML_BLOCK, 2, GGML_BLOCK // 2)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`, as int16 [N, K] (room for the centring subtraction)."""
    n, half = packed.shape
    blocks = packed.view(n, half // (GGML_BLOCK // 2), 1, GGML_BLOCK // 2).to(torch.int16)
    return torch.cat([blocks & 0x0F, blocks >> 4], dim=2).reshape(n, half * 2)


def ggml_blocks(qw: QuantizedWeight) -> np.ndarray:
    """The weight as GGML blocks, uint8 [N, K/32 * type_size] (rows of `block_q8_0`/`q4_0`/`q4_1`):
    what a GGUF writer copies. Groups wider than 32 repeat their scale in each block."""
    n, k = qw.shape
    nb, repeat = k // GGML_BLOCK, qw.scheme.group_size // GGML_BLOCK

    def per_block(t: torch.Tensor) -> np.ndarray:
        return t.repeat_interleave(repeat, dim=1).numpy().astype(np.float16).view(np.uint8).reshape(n, nb, 2)

    parts = [per_block(qw.scales)]
    if qw.mins is not None:
        parts.append(per_block(qw.mins))
    parts.append(qw.codes.numpy().view(np.uint8).reshape(n, nb, -1))
    return np.concatenate(parts, axis=-1).reshape(n, -1)


def matmul_nbits(qw: QuantizedWeight) -> dict[str, np.ndarray]:
    """A symmetric 4-bit weight as onnxruntime `MatMulNBits` inputs (bits=4, block_size=group_size,
    K, N, no zero_points: the default zero is 8, as in q4_0): B uint8 [N, K/group, group/2] with
    consecutive values paired in a byte, scales float16 [N * K/group]. q4_1 has no lossless form
    there (MatMulNBits wants a zero point z with w = (c - z) * d; z = -m/d is not a float16 value)."""
    if qw.scheme.bits != 4 or qw.scheme.asym:
        raise TinyLLMError(f"{qw.scheme.name}: only symmetric int4 maps losslessly onto MatMulNBits")
    n, k = qw.shape
    g = qw.scheme.group_size
    codes = unpack_int4(qw.codes).to(torch.uint8)
    b = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, k // g, g // 2).numpy()
    return {"B": b, "scales": qw.scales.reshape(-1).numpy()}
