"""GPTQ (Frantar et al., 2022): Hessian-aware rounding, calibrated on real activations.

For a linear layer with inputs X, GPTQ minimises ||X W^T - X Q^T|| rather than ||W - Q||: it
quantizes one input column at a time and spreads that column's rounding error over the columns
not yet quantized, weighted by the inverse of H = X^T X (via its Cholesky factor). A group's
scale (and minimum) is chosen by the RTN rule from the group's weights as they stand when the
group is reached, so the codes land in exactly the RTN block layout.

Layers are done in order: the calibration activations are pushed through each block once to
collect the Hessians of its matrices, the matrices are quantized, and the block is run again
with its quantized weights to give the next block its inputs, so every layer is calibrated on
what it will really see. A tied embedding/head is rounded to nearest first (it is a lookup table
as much as a matmul); an untied head is calibrated on the final norm's output.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from quantize.rtn import encode, group_params, quantize_rtn, store
from quantize.schemes import QuantizedWeight, Scheme
from tinyllm.model import Transformer

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it, as in the reference code
BATCH = 8  # calibration sequences per forward pass


def _values(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, scheme: Scheme) -> torch.Tensor:
    if scheme.bits == 8:
        return codes.float() * d
    if scheme.asym:
        return codes.float() * d + m
    return (codes.float() - 8) * d


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, scheme: Scheme) -> QuantizedWeight:
    """Quantize W [N, K] given H [K, K] (the sum of x x^T over calibration inputs)."""
    w = weight.detach().float().clone()
    n, k = w.shape
    g = scheme.group_size
    h = hessian.double().clone()
    dead = h.diagonal() == 0  # inputs that never fire: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(DAMPING * h.diagonal().mean())
    # The upper Cholesky factor of H^-1 holds every column's error-propagation row.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
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
        err = (w[:, col] - _values(c, d, m, scheme)) / hinv[col, col]
        w[:, col + 1:].addr_(err, hinv[col, col + 1:], alpha=-1.0)
    return store(codes, scales, mins, scheme)


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


def _set(model: Transformer, name: str, qw: QuantizedWeight) -> None:
    """Put the dequantized weight in place, so later layers calibrate on quantized outputs."""
    model.get_parameter(name).data.copy_(qw.dequantize())


@torch.inference_mode()
def quantize_gptq(model: Transformer, plan: dict[str, Scheme], calib: torch.Tensor,
                  progress: Callable[[str], None] = lambda _: None) -> dict[str, QuantizedWeight]:
    """Quantize every matrix in `plan` (our module names) with GPTQ on `calib` [n_seq, T] token ids.
    `model` is a float copy the function may modify (it ends with dequantized weights)."""
    out: dict[str, QuantizedWeight] = {}
    tied = model.config.tie_embeddings
    if "embed_tokens.weight" in plan:
        out["embed_tokens.weight"] = quantize_rtn(model.embed_tokens.weight, plan["embed_tokens.weight"])
        _set(model, "embed_tokens.weight", out["embed_tokens.weight"])
    batches = calib.split(BATCH)
    hidden = [model.embed_tokens(b) for b in batches]
    t = calib.shape[1]
    cos, sin = model.rope_cos[:t], model.rope_sin[:t]
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
