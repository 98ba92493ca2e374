"""GPTQ (Frantar et al., 2022): Hessian-aware rounding, calibrated on real activations.

For a linear layer with inputs X, GPTQ minimises ||X W^T - X Q^T|| rather than ||W - Q||: it
quantizes one input column at a time and spreads that column's rounding error over the columns
not yet quantized, weighted by the inverse of H = X^T X (via its Cholesky factor). A group's
scale (and minimum) is chosen by the RTN rule from the group's weights as they stand when the
group is reached, so the codes land in exactly the RTN block layout.

For the K-quants the same happens per 256-column super-block: when one is reached, its sub-block
scales and minimums and its float16 d/dmin are chosen from the error-updated weights by llama.cpp's
imatrix-weighted search (quantize/kquant_search.py), with importance = diag(H), the mean square of
each input over the calibration text (what llama-imatrix measures); then its columns are coded one
by one on that grid, each column's error spread over the columns still to come.

Layers are done in order: the calibration activations are pushed through each block once to
collect the Hessians of its matrices, the matrices are quantized, and the block is run again
with its quantized weights to give the next block its inputs, so every layer is calibrated on
what it will really see. A tied embedding/head is quantized first, by GPTQ on the head's input
(the float model's final norm output); an untied head is calibrated on the final norm's output
as the quantized layers give it, an untied embedding (a lookup table only) rounded to nearest.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from quantize.kquant_search import grid_codes, k_grid
from quantize.kquants import QK_K, KQuantWeight, KScheme
from quantize.rtn import encode, group_params, quantize_rtn, store
from quantize.schemes import QuantizedWeight, Scheme
from tinyllm.model import Transformer

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it, as in the reference code
# A tied table is a lookup as well as the head: stronger damping keeps GPTQ's error feedback from
# moving its rows (the lookup's output) too far for the head's sake. 0.3 measured best of
# 0.01-3 on the real-text demo model's held-out KL divergence (q4_k: 0.0016 RTN, 0.0012 at 0.01,
# 0.0009 at 0.3).
TABLE_DAMPING = 0.3
BATCH = 8  # calibration sequences per forward pass


def _values(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, scheme: Scheme) -> torch.Tensor:
    if scheme.bits == 8:
        return codes.float() * d
    if scheme.asym:
        return codes.float() * d + m
    return (codes.float() - 8) * d


def _inverse_factor(weight: torch.Tensor, hessian: torch.Tensor,
                    damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W float32 copy with dead inputs zeroed, the upper Cholesky factor of the damped H^-1: each
    column's error-propagation row)."""
    w = weight.detach().float().clone()
    h = hessian.double().clone()
    dead = h.diagonal() == 0  # inputs that never fire: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damping * h.diagonal().mean())
    return w, torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()


def _feed_forward(w: torch.Tensor, hinv: torch.Tensor, col: int, kept: torch.Tensor) -> None:
    """Spread column `col`'s rounding error (w - kept) over the columns after it."""
    err = (w[:, col] - kept) / hinv[col, col]
    w[:, col + 1:].addr_(err, hinv[col, col + 1:], alpha=-1.0)


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, scheme: Scheme | KScheme,
                damping: float = DAMPING) -> QuantizedWeight | KQuantWeight:
    """Quantize W [N, K] given H [K, K] (the sum of x x^T over calibration inputs)."""
    if isinstance(scheme, KScheme):
        return _gptq_k(weight, hessian, scheme, damping)
    w, hinv = _inverse_factor(weight, hessian, damping)
    n, k = w.shape
    g = scheme.group_size
    codes = torch.empty(n, k, dtype=torch.int8 if scheme.bits == 8 else torch.uint8)
    scales, mins = torch.empty(n, k // g), torch.empty(n, k // g) if scheme.asym else None
    for col in range(k):
        if col % g == 0:
            d, m = group_params(w[:, col:col + g], scheme)
            # Round the grid to what is stored, so the error fed forward is the error kept.
            d = d.half().float()
            m = m.half().float() if m is not None else None
            scales[:, col // g] = d
            if m is not None:
                mins[:, col // g] = m
        c = encode(w[:, col], d, m, scheme)
        codes[:, col] = c
        _feed_forward(w, hinv, col, _values(c, d, m, scheme))
    return store(codes, scales, mins, scheme)


def _gptq_k(weight: torch.Tensor, hessian: torch.Tensor, scheme: KScheme, damping: float) -> KQuantWeight:
    layout = scheme.layout
    importance = hessian.diagonal().float()
    w, hinv = _inverse_factor(weight, hessian, damping)
    n, k = w.shape
    codes = torch.empty(n, k, dtype=torch.int8)
    grids = []
    for start in range(0, k, QK_K):
        grid = k_grid(layout, w[:, start:start + QK_K], importance[start:start + QK_K])
        grids.append(grid)
        steps, offsets = grid.step(), grid.offset()
        for col in range(start, start + QK_K):
            j = (col - start) // layout.sub
            offset = None if offsets is None else offsets[:, j]
            c = grid_codes(layout, w[:, col], steps[:, j], offset, grid.codes[:, col - start])
            codes[:, col] = c
            kept = steps[:, j] * c.float()
            _feed_forward(w, hinv, col, kept if offset is None else kept - offset)
    cat = lambda part: None if getattr(grids[0], part) is None else \
        torch.cat([getattr(g, part) for g in grids], dim=1)  # noqa: E731
    return KQuantWeight.pack(layout, codes, cat("sc"), cat("m"), cat("d"), cat("dmin"))


class _Hessians:
    """Forward hooks that sum x x^T of each watched linear's input."""

    def __init__(self, modules: dict[str, nn.Linear]):
        self.sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64)
                     for name, m in modules.items()}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            self.sums[name].addmm_(x.T, x)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _set(model: Transformer, name: str, qw: QuantizedWeight | KQuantWeight) -> None:
    """Put the dequantized weight in place, so later layers calibrate on quantized outputs."""
    model.get_parameter(name).data.copy_(qw.dequantize())


def _rope(model: Transformer, calib: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = calib.shape[1]
    return model.rope_cos[:t], model.rope_sin[:t]


@torch.inference_mode()
def head_hessian(model: Transformer, calib: torch.Tensor) -> torch.Tensor:
    """H of the output head's input (the final norm's output) on `calib`, through `model` as it is."""
    hooks = _Hessians({"lm_head.weight": model.lm_head})
    for batch in calib.split(BATCH):
        model(batch)
    hooks.remove()
    return hooks.sums["lm_head.weight"]


def quantize_table(table: torch.Tensor, scheme: Scheme | KScheme, hessian: torch.Tensor | None,
                   tied: bool) -> QuantizedWeight | KQuantWeight:
    """The token embedding: a tied one is also the head, so it is calibrated as the head (GPTQ on
    the head's input Hessian); an untied one is a lookup table only, rounded to nearest."""
    if tied and hessian is not None:
        return gptq_weight(table, hessian, scheme, TABLE_DAMPING)
    return quantize_rtn(table, scheme)


@torch.inference_mode()
def quantize_gptq(model: Transformer, plan: dict[str, Scheme | KScheme], calib: torch.Tensor,
                  progress: Callable[[str], None] = lambda _: None) -> dict[str, QuantizedWeight | KQuantWeight]:
    """Quantize every matrix in `plan` (our module names) with GPTQ on `calib` [n_seq, T] token ids.
    `model` is a float copy the function may modify (it ends with dequantized weights)."""
    out: dict[str, QuantizedWeight | KQuantWeight] = {}
    tied = model.config.tie_embeddings
    if "embed_tokens.weight" in plan:
        progress("embed_tokens.weight")
        hessian = head_hessian(model, calib) if tied else None
        out["embed_tokens.weight"] = quantize_table(model.embed_tokens.weight, plan["embed_tokens.weight"],
                                                    hessian, tied)
        _set(model, "embed_tokens.weight", out["embed_tokens.weight"])
    hidden = [model.embed_tokens(b) for b in calib.split(BATCH)]
    cos, sin = _rope(model, calib)
    for i, block in enumerate(model.layers):
        watched = {f"layers.{i}.{n}.weight": m for n, m in block.named_modules()
                   if isinstance(m, nn.Linear) and f"layers.{i}.{n}.weight" in plan}
        hooks = _Hessians(watched)
        for x in hidden:
            block(x, cos, sin)
        hooks.remove()
        for name, module in watched.items():
            progress(name)
            out[name] = gptq_weight(module.weight, hooks.sums[name], plan[name])
            _set(model, name, out[name])
        hidden = [block(x, cos, sin) for x in hidden]
    if "lm_head.weight" in plan and not tied:
        progress("lm_head.weight")
        hooks = _Hessians({"lm_head.weight": model.lm_head})
        for x in hidden:
            model.lm_head(model.norm(x))
        hooks.remove()
        out["lm_head.weight"] = gptq_weight(model.lm_head.weight, hooks.sums["lm_head.weight"],
                                            plan["lm_head.weight"])
    return out


@torch.inference_mode()
def float_hessians(model: Transformer, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """H of every matrix's input on `calib` through the float model, in one pass (our module names;
    a tied table's is its head's)."""
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if model.config.tie_embeddings:
        linears["embed_tokens.weight"] = linears.pop("lm_head.weight")
    hooks = _Hessians(linears)
    for batch in calib.split(BATCH):
        model(batch)
    hooks.remove()
    return hooks.sums
