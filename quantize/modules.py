"""PyTorch modules that compute with the stored codes: `QuantLinear`, `QuantEmbedding`, and
`QuantizedTransformer` (the model with its matrices swapped for them).

Every path computes exactly what dequantize-then-float32-matmul computes, up to float rounding;
activations stay float32. The candidates for a layer's batch-1 (decode) matmul:

  native    quantize/kernels.c (built on first use by quantize/native.py): sums the codes in place
            against the activations, one scale per group. Fits everything; absent without a C
            compiler. Calls of up to NATIVE_ROWS rows run it too; longer ones have it write the
            float32 weight for one BLAS matmul.
  int4pack  torch.ops.aten._weight_int4pack_mm_for_cpu on _convert_weight_to_int4pack_for_cpu
            codes; it computes (c - 8) * d + z per group, so q4_0 is z = 0 and q4_1 is z = m + 8d.
            Needs N % 16 == 0 (the lm_head of an odd vocabulary does not fit).
  dequant   d * c (+ m) into float32, then one BLAS matmul. Fits everything.

Not candidates, on purpose: `_weight_int8pack_mm` takes one scale per output row, not per
32-value group, so it cannot run q8_0 exactly; `torch._int_mm` needs int8 activations, i.e.
quantizing the activations, which changes the numbers; the bfloat16 variants of the kernels
above round the activations to 8 mantissa bits. Which candidate is fastest depends on the
machine and the PyTorch build (x86 builds of torch 2.13 vectorize the int4 kernel for bfloat16
activations only), so `choose_path` times them once per shape and keeps the winner. Multi-token
calls past NATIVE_ROWS (prefill, perplexity chunks) are compute-bound and go to BLAS.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantize import native
from quantize.kquant_linear import KQuantLinear
from quantize.kquants import KQuantWeight
from quantize.rtn import store
from quantize.schemes import QuantizedWeight, Scheme, make_scheme, unpack_int4
from tinyllm.config import ModelConfig
from tinyllm.model import KVCache, Transformer

PATHS = ("native", "int4pack", "dequant")
# Up to this many rows per call the native kernel beats dequantize-then-BLAS (measured on a Zen 4
# with d_model 256: it re-reads the codes per row; BLAS amortizes one dequantized copy).
NATIVE_ROWS = 4


def fits(path: str, scheme: Scheme, n: int) -> bool:
    """Whether `path` can run a weight of this scheme with `n` output rows (on this machine)."""
    if path == "native":
        return native.load() is not None
    return path == "dequant" or (scheme.bits == 4 and n % 16 == 0)


class QuantLinear(nn.Module):
    """y = x W^T for a quantized W [N, K], computed on the codes by one of `PATHS`."""

    def __init__(self, qw: QuantizedWeight, path: str = "auto"):
        super().__init__()
        self.scheme = qw.scheme
        self.out_features, self.in_features = qw.shape
        n, k, g = self.out_features, self.in_features, qw.scheme.group_size
        self.path = choose_path(qw.scheme, n, k) if path == "auto" else path
        if not fits(self.path, qw.scheme, n):
            raise ValueError(f"kernel path {self.path!r} cannot run {qw.scheme.name} with {n} rows")
        # The codes as stored (what the native kernel and embedding lookups read), float32 scales
        # [N, K/group, 1] and minimums; the torch paths also keep the codes unpacked and centred.
        self.register_buffer("codes", qw.codes.contiguous())
        self.register_buffer("scales", qw.scales.float().unsqueeze(-1))
        self.register_buffer("mins", qw.mins.float().unsqueeze(-1) if qw.mins is not None else None)
        self.register_buffer("centred", qw.centred().view(n, k // g, g) if self.path != "native" else None)
        if self.path == "int4pack":
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                qw.unpacked().to(torch.int32), 1))
            zeros = 8 * self.scales + self.mins if self.mins is not None else torch.zeros_like(self.scales)
            # [K/group, N, 2]: the kernel's layout of (scale, zero) pairs.
            self.register_buffer("scale_zeros", torch.cat([self.scales, zeros], -1).transpose(0, 1).contiguous())

    def _on_native(self) -> bool:
        """Whether the native kernel runs this layer: its path (in a compiled graph, wherever the
        kernel is built: `choose_path` timed eager calls, and one op in a graph beats dequantizing
        the weight every token), with the buffers still what kernels.c reads (`.to()` / `.half()`
        may have moved or cast them)."""
        native_here = self.path == "native" or torch.compiler.is_compiling() and native.load() is not None
        return native_here and self.codes.is_cpu and self.scales.dtype == torch.float32

    def rows(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Rows `idx` of W in float32 [..., K] (all of W without `idx`), unpacking only those rows."""
        codes = self.codes if idx is None else self.codes[idx]
        lead = codes.shape[:-1]
        if self.scheme.bits == 4:
            codes = unpack_int4(codes.reshape(-1, self.in_features // 2)) - (0 if self.scheme.asym else 8)
        g = self.scheme.group_size
        w = codes.reshape(*lead, self.in_features // g, g).float() * \
            (self.scales if idx is None else self.scales[idx])
        if self.mins is not None:
            w = w + (self.mins if idx is None else self.mins[idx])
        return w.reshape(*lead, self.in_features)

    def dequantized(self) -> torch.Tensor:
        if self._on_native():
            return native.dequantize(self.codes, self.scales, self.mins, self.scheme.ggml_type, self.scheme.group_size)
        if self.centred is None:
            return self.rows()
        w = self.centred.float() * self.scales
        if self.mins is not None:
            w = w + self.mins
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Decode calls this ~30 times a token: the native branch keeps to the cheapest torch calls,
        # and in a compiled graph it is one op (a traced ctypes call would break the graph).
        if x.dtype == torch.float32 and x.numel() <= NATIVE_ROWS * self.in_features and self._on_native():
            matmul = torch.ops.tinyllm.native_matmul if torch.compiler.is_compiling() else native.matmul
            return matmul(x.contiguous(), self.codes, self.scales, self.mins, self.scheme.ggml_type,
                          self.scheme.group_size)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.path == "int4pack" and x2.shape[0] == 1:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.scheme.group_size,
                                                           self.scale_zeros)
        else:
            y = F.linear(x2, self.dequantized())
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, {self.scheme.ggml_type}/{self.scheme.group_size}, {self.path}"


class QuantEmbedding(nn.Module):
    """Token embedding rows dequantized on lookup (only the rows asked for)."""

    def __init__(self, linear: QuantLinear):
        super().__init__()
        self.table = linear  # shares the tied head's codes rather than holding a copy

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table.rows(idx)


def _time_path(path: str, scheme: Scheme, n: int, k: int, repeats: int = 20) -> float:
    g = scheme.group_size
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8) if scheme.bits == 4 else \
        torch.randint(-127, 128, (n, k), dtype=torch.int8)
    layer = QuantLinear(store(codes, torch.rand(n, k // g), torch.rand(n, k // g) if scheme.asym else None, scheme),
                        path)
    x = torch.randn(1, k)
    with torch.inference_mode():
        for _ in range(3):
            layer(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed run: the machine may be shared


@lru_cache(maxsize=None)
def _fastest(scheme: Scheme, n: int, k: int, threads: int) -> str:
    candidates = [p for p in PATHS if fits(p, scheme, n)]
    if len(candidates) == 1:
        return candidates[0]
    return min(candidates, key=lambda p: _time_path(p, scheme, n, k))


def choose_path(scheme: Scheme, n: int, k: int) -> str:
    """The fastest exact path for a batch-1 matmul of this shape, timed once per process."""
    return _fastest(scheme, n, k, torch.get_num_threads())


class QuantizedTransformer(Transformer):
    """A `Transformer` whose quantized matrices run on their codes; everything else is float32."""

    def __init__(self, config: ModelConfig, floats: dict[str, torch.Tensor], quantized: dict[str, QuantizedWeight],
                 path: str = "auto"):
        """`floats`/`quantized`: tensors under our module names (no `model.` prefix); a tied model
        lists its embedding once, as `embed_tokens.weight`. `path`: "auto" (the fastest per
        shape) or one of PATHS, taken by every matrix it fits."""
        super().__init__(config)

        def linear(qw: QuantizedWeight | KQuantWeight) -> QuantLinear | KQuantLinear:
            if isinstance(qw, KQuantWeight):
                return KQuantLinear(qw)
            # A forced path runs where it fits; the other matrices take the dequant path.
            return QuantLinear(qw, path if path == "auto" or fits(path, qw.scheme, qw.shape[0]) else "dequant")

        for name, qw in quantized.items():
            if name == "embed_tokens.weight":
                continue
            owner, attr = self._parent(name)
            setattr(owner, attr, linear(qw))
        if "embed_tokens.weight" in quantized:
            table = linear(quantized["embed_tokens.weight"])
            self.embed_tokens = QuantEmbedding(table)
            if config.tie_embeddings:
                self.lm_head = table
        missing, unexpected = self.load_state_dict(floats, strict=False)
        buffers = ("codes", "centred", "scales", "mins", "packed", "scale_zeros", "steps", "offsets")
        tied_head = ["lm_head.weight"] if config.tie_embeddings else []
        left = [m for m in missing if not m.endswith(buffers) and m not in tied_head]
        if left or unexpected:
            raise ValueError(f"float tensors do not match the model: missing {left[:4]}, unexpected {unexpected[:4]}")

    def _parent(self, name: str) -> tuple[nn.Module, str]:
        path, attr = name.removesuffix(".weight").rsplit(".", 1) if "." in name.removesuffix(".weight") \
            else ("", name.removesuffix(".weight"))
        return (self.get_submodule(path) if path else self), attr

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        norm = self.norm.weight  # the embedding may have no float weight to take device/dtype from
        return KVCache(self.config, batch_size, max_len, device=norm.device, dtype=norm.dtype)

    def kernel_paths(self) -> dict[str, int]:
        """How many quantized matrices run on each path (what `describe()` reports)."""
        counts: dict[str, int] = {}
        for module in self.modules():
            if isinstance(module, (QuantLinear, KQuantLinear)):
                key = f"{module.scheme.ggml_type}:{module.path}"
                counts[key] = counts.get(key, 0) + 1
        return counts


def kernel_report(n: int = 256, k: int = 256) -> list[str]:
    """Whether the native kernel was built (where, or why not), then one line per scheme: the path
    `choose_path` picks on this machine and the candidates (doctor)."""
    lines = [native.report()]
    for name, asym in (("int8", False), ("int4", False), ("int4", True)):
        scheme = make_scheme(name, asym)
        candidates = [p for p in PATHS if fits(p, scheme, n)]
        lines.append(f"{scheme.name} ({scheme.ggml_type}): {choose_path(scheme, n, k)} "
                     f"(exact candidates: {', '.join(candidates)}; float32 activations)")
    return lines
