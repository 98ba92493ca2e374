"""GGML's K-quant quantizers (llama.cpp ggml-quants.c), vectorized over every sub-block at once.

Two steps make a super-block's grid, a third its codes:
  1. each sub-block's float scale (and minimum): a search over a few candidate scales, each
     refined by weighted least squares (`make_qkx` for the asymmetric types, `make_qx` and
     `make_q3` for the symmetric ones);
  2. those scales quantized against the super-block's float16 d (and dmin): to the largest one
     (the reference quantizer) or by a weighted search (`make_qp`, `make_qx` on the scales);
  3. every value rounded to the nearest code on the quantized grid.

`quantize_k(w, layout)` is llama.cpp's quantize_row_qX_K_ref, what `llama-quantize` writes without
an imatrix. `quantize_k(w, layout, importance)` is quantize_row_qX_K_impl with quant_weights =
importance (an imatrix: the mean square of each input column over calibration activations):
each value's weight in the searches becomes importance * sqrt(sigma² + x²). `k_grid` runs steps
1-2 alone, for GPTQ, which then picks the codes column by column itself.

The arithmetic is float32 in llama.cpp's order (sums accumulate left to right; nearest_int is
round-half-to-even) so that the reference path reproduces llama-quantize's blocks; a build of
llama.cpp that contracts multiply-adds into FMAs can still differ in the last bit of a sum and,
rarely, in a choice between two candidates that tie to within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantize.kquants import QK_K, KLayout, KQuantWeight

GROUP_MAX_EPS = 1e-15


def f32(*terms: float) -> float:
    """A float32 constant of the C source as a Python float (torch then computes in float32);
    several terms are summed in float32, left to right (`rmin + rdelta*is + nmax`)."""
    total = np.float32(0)
    for t in terms:
        total = np.float32(total + np.float32(t))
    return float(total)


def _sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim -2 (a sub-block's values), left to right as a C loop accumulates (torch.sum
    reassociates, and torch.cumsum accumulates float32 in float64)."""
    acc = t[..., 0, :].clone()
    for i in range(1, t.shape[-2]):
        acc += t[..., i, :]
    return acc


def _div(a: float, t: torch.Tensor) -> torch.Tensor:
    """a / t in float32, correctly rounded (torch's `scalar / tensor` multiplies by t's reciprocal)."""
    return torch.full_like(t, a) / t


def _sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrtf, correctly rounded (torch's float32 sqrt on x86 can be 1 ulp off; via float64 it is exact)."""
    return torch.sqrt(t.double()).float()


def _f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).float()


def _zero_where(mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, torch.zeros_like(t), t)


# The searches below take sub-blocks as columns: x, w [n, B] hold B sub-blocks of n values, so that
# every per-value step of the C loops is one operation on a contiguous row of B.

def make_qkx(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
             use_mad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants / make_qkx3_quants: (scale [B], minimum [B] >= 0, codes [n, B] in 0..nmax),
    x ≈ scale * L - minimum."""
    lo = x.amin(0).clamp(max=0.0)
    hi = x.amax(0)
    flat = hi == lo
    sum_w, sum_x = _sum(torch.stack([w, w * x]))

    def error(scale, offset, codes):
        diff = scale * codes + offset - x
        return _sum(w * (diff.abs() if use_mad else diff * diff))

    def rounded(levels, offset):  # the C code reuses `min`: each trial starts from the best offset so far
        span = torch.where(flat, torch.ones_like(hi), hi - offset)
        return torch.round(_div(levels, span) * (x - offset)).clamp(0, nmax), span

    codes, span = rounded(float(nmax), lo)
    scale = _div(1.0, _div(float(nmax), span))
    best = error(scale, lo, codes)
    offset = lo
    for step in range(nstep + 1):
        trial, _ = rounded(f32(rmin, np.float32(rdelta) * np.float32(step), nmax), offset)
        wl = w * trial
        sum_l, sum_l2, sum_xl = _sum(torch.stack([wl, wl * trial, wl * x]))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        this_min = _zero_where(positive, this_min)
        cur = error(this_scale, this_min, trial)
        better = (det > 0) & (cur < best) & ~flat
        codes = torch.where(better, trial, codes)
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        offset = torch.where(better, this_min, offset)
    return _zero_where(flat, scale), -offset, _zero_where(flat, codes)


def _signed_peak(x: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude (the first such) of each column of x [n, B]."""
    return x.gather(0, x.abs().argmax(0, keepdim=True)).squeeze(0)


def make_qx(x: torch.Tensor, nmax: int, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(rmse_type 1): (signed scale [B], codes L [n, B] in 0..2*nmax-1),
    x ≈ scale * (L - nmax). Weights `w` (default x²)."""
    peak = _signed_peak(x)
    zero = peak.abs() < GROUP_MAX_EPS
    safe = torch.where(zero, torch.ones_like(peak), peak)
    w = x * x if w is None else w
    wx = w * x

    def trial(iscale):
        levels = torch.round(iscale * x).clamp(-nmax, nmax - 1)
        return (levels, *_sum(torch.stack([wx * levels, w * levels * levels])))

    levels, sumlx, suml2 = trial(_div(float(-nmax), safe))
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        cand, slx, sl2 = trial(_div(-f32(nmax, np.float32(0.1) * np.float32(step)), safe))
        better = (sl2 > 0) & (slx * slx > best * sl2)
        levels = torch.where(better, cand, levels)
        scale = torch.where(better, slx / sl2, scale)
        best = torch.where(better, scale * slx, best)
    return _zero_where(zero, scale), _zero_where(zero, levels + nmax)


def _coordinate_descent(x: torch.Tensor, w: torch.Tensor, levels: torch.Tensor, lo: int | None, hi: int,
                        need_sl2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 5 passes of single-code moves in make_q3_quants / make_qp_quants, one value at a time
    (in order, as each move changes the sums the next one sees), all columns at once."""
    sumlx, suml2 = _sum(torch.stack([w * x * levels, w * levels * levels]))
    for _ in range(5):
        changed = torch.zeros(x.shape[1], dtype=torch.bool)
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], levels[i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0) if need_sl2 else slx > 0
            new = torch.round(xi * sl2 / torch.where(ok, slx, torch.ones_like(slx))).clamp(lo, hi)
            slx_new, sl2_new = slx + wi * xi * new, sl2 + wi * new * new
            accept = ok & (new != li) & (sl2_new > 0) & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new)
            levels[i] = torch.where(accept, new, li)
            sumlx = torch.where(accept, slx_new, sumlx)
            suml2 = torch.where(accept, sl2_new, suml2)
            changed |= accept
        if not changed.any():  # a pass that moves nothing leaves the same state for the next
            break
    return levels, sumlx, suml2


def make_q3(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants(do_rmse): (signed scale [B], codes L [n, B] in 0..2*nmax-1)."""
    peak = _signed_peak(x)
    zero = peak.abs() < GROUP_MAX_EPS
    safe = torch.where(zero, torch.ones_like(peak), peak)
    levels = torch.round(_div(float(-nmax), safe) * x).clamp(-nmax, nmax - 1)
    levels, sumlx, suml2 = _coordinate_descent(x, x * x, levels, -nmax, nmax - 1, need_sl2=False)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return _zero_where(zero, scale), _zero_where(zero, levels + nmax)


def make_qp(x: torch.Tensor, nmax: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qp_quants over x >= 0: (scale [B], codes [n, B] in 0..nmax), x ≈ scale * L."""
    peak = x.amax(0)
    zero = peak < GROUP_MAX_EPS
    safe = torch.where(zero, torch.ones_like(peak), peak)

    def mse(iscale, clamp):
        levels = torch.round(iscale * x)
        levels = levels.clamp(max=nmax) if clamp else levels
        diff = x - _div(1.0, iscale) * levels
        return _sum(w * diff * diff)

    iscale = _div(float(nmax), safe)
    best = mse(iscale, clamp=False)
    for step in range(-4, 5):
        if step == 0:
            continue
        cand = _div(f32(np.float32(0.1) * np.float32(step), nmax), safe)
        err = mse(cand, clamp=True)
        better = err < best
        best = torch.where(better, err, best)
        iscale = torch.where(better, cand, iscale)
    levels = torch.round(iscale * x).clamp(max=nmax)
    levels, sumlx, suml2 = _coordinate_descent(x, w, levels, None, nmax, need_sl2=True)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return _zero_where(zero, scale), _zero_where(zero, levels)


@dataclass
class KGrid:
    """A super-block grid: integer sub-block scales (and minimums) [R, nb, nsub], float16 d (and dmin)
    [R, nb] as stored, and the codes the search settled on (where a sub-block's step is 0 they stay)."""

    sc: torch.Tensor
    m: torch.Tensor | None
    d: torch.Tensor
    dmin: torch.Tensor | None
    codes: torch.Tensor  # centred, [R, nb * 256]

    def step(self) -> torch.Tensor:
        """d * sc, float32 [R, nb * nsub]: the step of every sub-block as GGML computes it."""
        return (self.d.float().unsqueeze(-1) * self.sc.float()).flatten(1)

    def offset(self) -> torch.Tensor | None:
        return None if self.m is None else (self.dmin.float().unsqueeze(-1) * self.m.float()).flatten(1)


def _columns(t: torch.Tensor, n: int) -> torch.Tensor:
    """Consecutive runs of n values (sub-blocks, or a super-block's scales) as the columns of [n, B]."""
    return t.reshape(-1, n).T.contiguous()


def _importance_weights(x: torch.Tensor, importance: torch.Tensor, sigma_factor: int) -> torch.Tensor:
    """quant_weights * sqrt(sigma² + x²), sigma² = factor * the super-block's mean square (x [R, nb, 256])."""
    r, nb, _ = x.shape
    sigma2 = f32(sigma_factor) * _sum(_columns(x * x, QK_K)) / torch.tensor(float(QK_K))
    return importance * _sqrt(sigma2.view(r, nb, 1) + x * x)


def _asymmetric_grid(layout: KLayout, x: torch.Tensor, imp: torch.Tensor | None) -> KGrid:
    """q2_k / q4_k / q5_k: sub-block scale and minimum by make_qkx, both quantized against d and dmin."""
    r, nb, _ = x.shape
    sub, nsub, nmax = layout.sub, layout.nsub, layout.hi
    levels = 15 if layout.name == "q2_k" else 63
    sub_x = _columns(x, sub)
    if imp is not None:  # quantize_row_qX_K_impl
        weights = _columns(_importance_weights(x, imp, 1 if layout.name == "q2_k" else 2), sub)
        scales, mins, codes = make_qkx(sub_x, weights, nmax, -0.9, 0.05, 36, False)
        sw = _columns(_sum(weights), nsub)
        d, sc = make_qp(_columns(scales, nsub), levels, sw)
        dmin, m = make_qp(_columns(mins, nsub), levels, sw)
        return KGrid(sc.T.reshape(r, nb, nsub), m.T.reshape(r, nb, nsub), _f16(d).view(r, nb),
                     _f16(dmin).view(r, nb), codes)
    if layout.name == "q2_k":  # quantize_row_qX_K_ref
        scales, mins, codes = make_qkx(sub_x, sub_x.abs(), nmax, -0.5, 0.1, 15, True)
    else:
        spread = _sqrt(_sum(sub_x * sub_x) / torch.tensor(32.0))
        rmin, nstep = (-1.0, 20) if layout.name == "q4_k" else (-0.5, 15)
        scales, mins, codes = make_qkx(sub_x, spread + sub_x.abs(), nmax, rmin, 0.1, nstep, False)

    def quantized(values):  # against their largest, which maps to `levels`
        values = values.view(r, nb, nsub)
        peak = values.amax(-1).clamp(min=0)
        inv = torch.where(peak > 0, _div(float(levels), torch.where(peak > 0, peak, 1.0)), 0.0)
        return torch.round(inv[..., None] * values).clamp(max=levels), _f16(peak / torch.tensor(float(levels)))

    (sc, d), (m, dmin) = quantized(scales), quantized(mins)
    return KGrid(sc, m, d, dmin, codes)


def _q3_grid(x: torch.Tensor, imp: torch.Tensor | None) -> KGrid:
    r, nb, _ = x.shape
    sub_x = _columns(x, 16)
    if imp is not None:
        weights = _columns(_importance_weights(x, imp, 2), 16)
        scales, codes = make_qx(sub_x, 4, weights)
        d, levels = make_qx(_columns(scales, 16), 32, _columns(_sum(weights), 16))
        return KGrid((levels - 32).T.reshape(r, nb, 16), None, _f16(d).view(r, nb), None, codes - 4)
    scales, codes = make_q3(sub_x, 4)
    peak = _signed_peak(_columns(scales, 16)).view(r, nb)
    scales = scales.view(r, nb, 16)
    has = peak != 0
    iscale = torch.where(has, _div(-32.0, torch.where(has, peak, 1.0)), 0.0)
    sc = torch.round(iscale[..., None] * scales).clamp(-32, 31)
    sc = torch.where(has[..., None], sc, -32.0)  # scale bytes left 0, which decode to -32 (times d = 0)
    d = _f16(torch.where(has, _div(1.0, torch.where(has, iscale, 1.0)), 0.0))
    return KGrid(sc, None, d, None, codes - 4)


def _q6_grid(x: torch.Tensor, imp: torch.Tensor | None) -> KGrid:
    r, nb, _ = x.shape
    scales, codes = make_qx(_columns(x, 16), 32, None if imp is None else _columns(imp, 16))
    peak = _signed_peak(_columns(scales, 16)).view(r, nb)
    scales = scales.view(r, nb, 16)
    empty = peak.abs() < GROUP_MAX_EPS
    iscale = _div(-128.0, torch.where(empty, 1.0, peak))
    d = torch.where(empty, 0.0, _f16(_div(1.0, iscale)))
    sc = torch.where(empty[..., None], 0.0, torch.round(iscale[..., None] * scales).clamp(max=127))
    # An empty super-block is all zero bytes: unsigned codes 0, centred -32.
    codes = torch.where(empty[..., None].expand(r, nb, 16).reshape(-1), 0.0, codes)
    return KGrid(sc, None, d, None, codes - 32)


def k_grid(layout: KLayout, x: torch.Tensor, importance: torch.Tensor | None = None) -> KGrid:
    """Steps 1-2 for rows x [R, K] (K a multiple of 256): the reference quantizer's grid, or with
    `importance` [K] (per input column) the imatrix-weighted one."""
    r, k = x.shape
    nb = k // QK_K
    x = x.float().reshape(r, nb, QK_K)
    imp = None if importance is None else importance.float().reshape(1, nb, QK_K).expand(r, nb, QK_K)
    if layout.has_min:
        grid = _asymmetric_grid(layout, x, imp)
    else:
        grid = _q3_grid(x, imp) if layout.name == "q3_k" else _q6_grid(x, imp)
    return KGrid(grid.sc.to(torch.int16), None if grid.m is None else grid.m.to(torch.int16),
                 grid.d.to(torch.float16), None if grid.dmin is None else grid.dmin.to(torch.float16),
                 grid.codes.T.reshape(r, k).to(torch.int8))


def grid_codes(layout: KLayout, x: torch.Tensor, step: torch.Tensor, offset: torch.Tensor | None,
               fallback: torch.Tensor) -> torch.Tensor:
    """Step 3 for values x [..., n] on their sub-blocks' step/offset [..., n] (broadcast): the nearest
    code, as GGML rounds it; where a step is 0 the code is `fallback`'s."""
    has = step != 0
    safe = torch.where(has, step, torch.ones_like(step))
    q = torch.round((x + offset) / safe if offset is not None else x / safe).clamp(layout.lo, layout.hi)
    return torch.where(has, q, fallback.float()).to(torch.int8)


def quantize_k(weight: torch.Tensor, layout: KLayout, importance: torch.Tensor | None = None) -> KQuantWeight:
    """A float matrix [N, K] in `layout`: llama.cpp's reference quantizer, or its imatrix-weighted one."""
    x = weight.detach().float()
    n, k = x.shape
    grid = k_grid(layout, x, importance)
    expand = lambda t: t.repeat_interleave(layout.sub, dim=1)  # noqa: E731  per sub-block -> per value
    offset = grid.offset()
    codes = grid_codes(layout, x, expand(grid.step()), None if offset is None else expand(offset), grid.codes)
    return KQuantWeight.pack(layout, codes, grid.sc, grid.m, grid.d, grid.dmin)
