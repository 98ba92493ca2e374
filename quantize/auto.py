"""`tinyllm-quantize auto --target-bpw X`: a type for every tensor, for the least KL divergence at a size.

1. Measure. Every quantizable tensor (the attention and feed-forward matrices, the embedding and
   the output head) is quantized alone in every candidate type — q2_k … q6_k, q4_0, q4_1, q8_0 and
   f16; only the 32-block types where its rows do not split into 256 — by the method asked for
   (GPTQ on the float model's activations, or round to nearest), and the model's next-token
   distribution on the calibration text is compared with the float32 model's: the mean KL
   divergence is that tensor's cost in that type. A tensor's effect is measured from its own
   block onward (the float activations before it are cached).
2. Choose. The errors of different tensors add up, to first order, so the file with the least
   total is a knapsack: minimise the sum of the measured divergences subject to the file's size,
   solved exactly by dynamic programming over the bytes (in units of at most 1/20000 of the
   budget). The size is the GGUF file the checkpoint exports to — its header, metadata, tokenizer
   and norms included (export.gguf counts them) — so `--target-bpw` means file bits / parameters,
   as llama-quantize's sizes are quoted.
3. Quantize. The chosen types go through the usual sequential GPTQ (or RTN), so each layer is
   calibrated on the quantized layers before it; matrices chosen as f16 are stored in float16.

The measurements are recorded in the checkpoint (each tensor's entry, and which model, method and
calibration text they came from), so that `--sensitivity-from` an earlier auto checkpoint of the
same model can plan other sizes without measuring again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType

from quantize.checkpoint import F16, quantization_info
from quantize.gptq import float_hessians, gptq_weight, quantize_table
from quantize.kquants import QK_K
from quantize.rtn import quantize_rtn
from quantize.schemes import Scheme, format_scheme
from tinyllm.errors import TinyLLMError
from tinyllm.model import Transformer

CANDIDATES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q4_0", "q4_1", "q8_0", F16)
BLOCK_32 = ("q4_0", "q4_1", "q8_0", F16)  # what rows that do not split into 256 can take
SENSITIVITY_TOKENS = 4096  # of the calibration text, scored for each tensor and type
BATCH = 8
DP_UNITS = 20000


def candidates(shape: tuple[int, ...]) -> tuple[str, ...]:
    return CANDIDATES if shape[-1] % QK_K == 0 else BLOCK_32


def ggml_type(fmt: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[fmt.upper()]


def quantizable(model: Transformer) -> list[str]:
    """Our names of every matrix `auto` types: the blocks' matrices, the embedding, an untied head."""
    names = [n for n, p in model.named_parameters() if p.ndim == 2 and n != "lm_head.weight"]
    return names + ([] if model.config.tie_embeddings else ["lm_head.weight"])


def quantize_as(model: Transformer, name: str, fmt: str, hessian: torch.Tensor | None,
                method: str) -> torch.Tensor:
    """The float weight `name` holds once quantized alone in `fmt` (dequantized)."""
    weight = model.get_parameter(name).detach()
    if fmt == F16:
        return weight.half().float()
    scheme = format_scheme(fmt)
    if name == "embed_tokens.weight":
        qw = quantize_table(weight, scheme, hessian if method == "gptq" else None, model.config.tie_embeddings)
    elif method == "gptq":
        qw = gptq_weight(weight, hessian, scheme)
    else:
        qw = quantize_rtn(weight, scheme)
    return qw.dequantize()


class _Probe:
    """The float model on the scored tokens: its log-probabilities and each block's input, so
    that a changed tensor is scored by running only what follows it."""

    def __init__(self, model: Transformer, tokens: torch.Tensor):
        self.model = model
        self.batches = tokens.split(BATCH)
        t = tokens.shape[1]
        self.cos, self.sin = model.rope_cos[:t], model.rope_sin[:t]
        self.inputs: list[list[torch.Tensor]] = [[] for _ in model.layers]
        self.final: list[torch.Tensor] = []
        self.reference: list[torch.Tensor] = []
        for ids in self.batches:
            h = model.embed_tokens(ids)
            for i, block in enumerate(model.layers):
                self.inputs[i].append(h)
                h = block(h, self.cos, self.sin)
            self.final.append(h)
            self.reference.append(torch.log_softmax(model.lm_head(model.norm(h)).double(), -1).float())
        self.n_tokens = tokens.numel()

    def kld(self, first: int | None) -> float:
        """Mean KL(float || model) over the scored tokens, the model run from block `first` on
        (0 from the token ids, None: the output head alone)."""
        total = 0.0
        for b, ids in enumerate(self.batches):
            if first is None:
                h = self.final[b]
            else:
                h = self.model.embed_tokens(ids) if first == 0 else self.inputs[first][b]
                for block in self.model.layers[first:]:
                    h = block(h, self.cos, self.sin)
            log_q = torch.log_softmax(self.model.lm_head(self.model.norm(h)).double(), -1)
            ref = self.reference[b].double()
            total += float((ref.exp() * (ref - log_q)).sum())
        return total / self.n_tokens


def _first_block(name: str) -> int | None:
    if name == "lm_head.weight":
        return None
    return int(name.split(".")[1]) if name.startswith("layers.") else 0


@torch.inference_mode()
def measure(model: Transformer, calib: torch.Tensor, method: str,
            progress: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, float]]:
    """name -> {type: mean KL divergence with that tensor alone quantized in that type}.
    `model` is the float model; it is left as it was."""
    hessians = float_hessians(model, calib) if method == "gptq" else {}
    scored = calib[:max(1, SENSITIVITY_TOKENS // calib.shape[1])]
    probe = _Probe(model, scored)
    out: dict[str, dict[str, float]] = {}
    for name in quantizable(model):
        param = model.get_parameter(name)
        original = param.detach().clone()
        out[name] = {}
        for fmt in candidates(tuple(param.shape)):
            progress(f"measuring {name} {fmt}")
            param.data.copy_(quantize_as(model, name, fmt, hessians.get(name), method))
            out[name][fmt] = max(probe.kld(_first_block(name)), 0.0)
            param.data.copy_(original)
    return out


def choose(options: dict[str, dict[str, tuple[int, float]]], budget: int) -> dict[str, str] | None:
    """The type for each tensor that minimises the summed divergence with the summed bytes within
    `budget` (options: name -> {type: (bytes, divergence)}); None if nothing fits."""
    unit = max(1, -(-budget // DP_UNITS))
    cap = budget // unit
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    steps = []
    for name, opts in options.items():
        ordered = sorted(opts.items(), key=lambda kv: kv[1][0])  # on a tie the smaller type wins
        new, arg = np.full(cap + 1, np.inf), np.full(cap + 1, -1)
        for j, (_, (nbytes, cost)) in enumerate(ordered):
            w = -(-nbytes // unit)
            if w > cap:
                continue
            shifted = np.full(cap + 1, np.inf)
            shifted[w:] = best[:cap + 1 - w] + cost
            better = shifted < new
            new[better], arg[better] = shifted[better], j
        best = new
        steps.append((name, ordered, arg))
    if not np.isfinite(best).any():
        return None
    c = int(np.argmin(best))
    chosen = {}
    for name, ordered, arg in reversed(steps):
        fmt, (nbytes, _) = ordered[arg[c]]
        chosen[name] = fmt
        c -= -(-nbytes // unit)
    return {name: chosen[name] for name in options}


@dataclass
class SizeModel:
    """The GGUF file's bytes as a function of the tensors' types: a fixed part (header, metadata,
    tokenizer, norms) plus each typed tensor's bytes."""

    fixed: int
    shapes: dict[str, tuple[int, int]]
    n_params: int
    tensor_bytes: Callable[[tuple[int, ...], GGMLQuantizationType], int]

    def nbytes(self, name: str, fmt: str) -> int:
        return self.tensor_bytes(self.shapes[name], ggml_type(fmt))

    def bpw(self, types: dict[str, str]) -> float:
        return 8 * (self.fixed + sum(self.nbytes(n, f) for n, f in types.items())) / self.n_params

    def extreme(self, pick: Callable) -> dict[str, str]:
        return {n: pick(candidates(s), key=lambda f, n=n: self.nbytes(n, f)) for n, s in self.shapes.items()}


def check_target(size: SizeModel, target_bpw: float) -> None:
    """Refuse a size no choice of types reaches, before anything is measured."""
    low, high = size.bpw(size.extreme(min)), size.bpw(size.extreme(max))
    if target_bpw < low:
        raise TinyLLMError(f"--target-bpw {target_bpw:g}: below the smallest file this model can be, {low:.3f} bpw "
                           f"(every matrix in its smallest type, q2_k or q4_0, plus the file's metadata and "
                           f"float32 norms); ask for {low:.2f} or more")
    if target_bpw > high:
        raise TinyLLMError(f"--target-bpw {target_bpw:g}: above the largest file auto writes, {high:.3f} bpw (every "
                           "matrix in f16); for more, export the float32 checkpoint itself")


def plan_types(size: SizeModel, sensitivity: dict[str, dict[str, float]],
               target_bpw: float) -> dict[str, str]:
    budget = int(target_bpw * size.n_params / 8) - size.fixed
    options = {n: {f: (size.nbytes(n, f), kld) for f, kld in by_type.items()} for n, by_type in sensitivity.items()}
    chosen = choose(options, budget)
    if chosen is None:  # check_target makes this unreachable; kept as the knapsack's own guard
        raise TinyLLMError(f"--target-bpw {target_bpw:g}: no choice of types fits")
    return chosen


def records(types: dict[str, str], sensitivity: dict[str, dict[str, float]]) -> dict[str, dict]:
    """What config.json adds to each tensor's entry: the divergences measured, and why a tensor
    had only 32-block types."""
    out = {}
    for name, fmt in types.items():
        entry = {"chosen_by": "auto", "kl_divergence": dict(sensitivity[name])}
        if set(sensitivity[name]) == set(BLOCK_32):
            entry["note"] = f"rows do not split into {QK_K}-value super-blocks: 32-block types only"
        out[name] = entry
    return out


def schemes_of(types: dict[str, str]) -> dict[str, Scheme]:
    """The quantized (non-f16) tensors' schemes, for quantize_model."""
    return {n: format_scheme(f) for n, f in types.items() if f != F16}


def reuse_sensitivity(path, digest: str, method: str, calibration: dict) -> dict[str, dict[str, float]]:
    """The divergences an earlier auto checkpoint measured, if it measured this model this way."""
    info = quantization_info(path)
    if info is None or info.get("scheme") != "auto":
        raise TinyLLMError(f"--sensitivity-from {path}: not a checkpoint written by `tinyllm-quantize auto`")
    recorded = info.get("sensitivity") or {}
    if (recorded.get("checkpoint_sha256"), info.get("method"), info.get("calibration")) != (digest, method, calibration):
        raise TinyLLMError(f"--sensitivity-from {path}: measured on another model, method or calibration text than "
                           "this run's; leave the option out to measure again")
    return {name.removeprefix("model."): entry["kl_divergence"] for name, entry in info["tensors"].items()}
