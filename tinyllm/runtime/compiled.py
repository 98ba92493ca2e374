"""The compiled decode step: one token through the whole model as one graph, with torch.compile.

Why: eager PyTorch runs a tiny model's token as a few hundred small ops, each with microseconds
of Python and dispatch around it, so the weights are not what a token costs (docs/runtimes.md has
the figures). gpt-fast's recipe removes that: `model.KVCache` has one shape for every position
and `Transformer.forward_at` takes the position as a tensor, so torch.compile captures a single
graph (fullgraph, static shapes) that serves every decode step:

  cpu   Inductor: C++ kernels with OpenMP, float32 matmuls on oneDNN/MKL, quantized ones on
        quantize/kernels.c through its operator `tinyllm::native_matmul`;
  cuda  Inductor with CUDA graphs (mode="reduce-overhead"): one graph replay a token. Written
        to be right, not run: the project's machine has no GPU.

Prefill stays eager: its length varies (a graph per length, or dynamic shapes), and a prompt is
one call, so Python's cost is paid once per answer, not once per token.

Compiling is paid once per machine: Inductor's FX-graph and AOTAutograd caches keep the compiled
code across processes, under tinyllm's cache (~/.cache/tinyllm/inductor) unless
$TORCHINDUCTOR_CACHE_DIR names another; a warm start still traces the model (Dynamo) but compiles
nothing. The first step is timed and said in one line. Without a toolchain nothing fails: the
runtime decodes eagerly and one line says why.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tinyllm.fileio import user_cache_dir
from tinyllm.model import KVCache, Transformer

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# Read before anything imports torch._dynamo, which sets the variable to torch's default (/tmp).
_USER_CACHE_DIR = os.environ.get(CACHE_ENV)


@dataclass
class CompileInfo:
    """What became of compiling: for the log line, `tinyllm doctor` and the bench's rows."""

    compiled: bool
    seconds: float | None = None  # the first step, compile (or cache load) included
    cached: bool | None = None  # Inductor's cache held the graph: a warm start
    reason: str = ""  # why decoding is eager, when it is

    def line(self) -> str:
        if not self.compiled:
            return f"torch.compile: off, decoding eagerly: {self.reason}"
        how = "loaded from the cache" if self.cached else f"compiled (cached in {cache_dir()} for the next start)"
        return f"torch.compile: decode step {how} in {self.seconds:.1f} s"


def cache_dir() -> str:
    """Where Inductor keeps compiled graphs: the user's $TORCHINDUCTOR_CACHE_DIR, else tinyllm's
    cache (Inductor reads the variable at each lookup)."""
    os.environ[CACHE_ENV] = _USER_CACHE_DIR or str(user_cache_dir("inductor"))
    return os.environ[CACHE_ENV]


def unavailable(device: torch.device) -> str:
    """Why torch.compile cannot run on `device` here ("" when it can), checked without compiling."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return "" if has_triton() else "Inductor needs Triton for CUDA and it is not installed (pip install triton)"
    from torch._inductor import config, cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        named = f"$CXX={os.environ['CXX']!r}" if os.environ.get("CXX") else "g++"
        return f"Inductor finds no C++ compiler ({named} does not run, searched {config.cpp.cxx[1]!r}); " \
               "install g++ or set $CXX"
    return ""


def _options(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"mode": "reduce-overhead"}
    return {}


class DecodeStep:
    """`model.forward_at` for one token after the cache's filled positions, compiled.

    Calls reuse two small input tensors (token, position), so the graph sees the same inputs
    every step; the logits it returns are only valid until the next call (CUDA graphs replay into
    the same output), which is why callers copy them out at once.
    """

    def __init__(self, model: Transformer, cache: KVCache):
        self.model, self.cache = model, cache
        device = cache.keys[0].device
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.cuda = device.type == "cuda"
        if self.cuda:
            # CUDA graphs skip graphs that mutate inputs unless those sit at fixed addresses.
            for t in cache.keys + cache.values:
                torch._dynamo.mark_static_address(t)
        self.limit = min(cache.max_len, model.config.max_seq_len)
        self.compiled = torch.compile(self._step, fullgraph=True, dynamic=False, **_options(device))

    def _step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.forward_at(token, pos, self.cache)[:, -1]

    def run(self, token: int, position: int) -> torch.Tensor:
        """Logits [1, vocab] for `token` at `position`, whose key and value it writes."""
        self.token.fill_(token)
        self.pos.fill_(position)
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(self.token, self.pos)

    def __call__(self, token: int) -> torch.Tensor:
        """Logits [1, vocab] for `token` at the next position; the cache advances by one."""
        position = self.cache.length
        if position >= self.limit:
            raise ValueError(f"{position + 1} positions exceed the context of {self.limit}")
        logits = self.run(token, position)
        self.cache.length += 1
        return logits


def prepare(model: Transformer, cache: KVCache,
            log: Callable[[str], None] | None = None) -> tuple[DecodeStep | None, CompileInfo]:
    """A compiled decode step on `cache`, compiled now (or loaded from Inductor's cache) by one
    untimed step, or None and why not; says which in one line to `log`. The cache is left as it
    was: the step writes the first unfilled position, which stays unfilled."""
    device = cache.keys[0].device
    cache_dir()
    reason = unavailable(device)
    step = info = None
    if not reason:
        from torch._dynamo.utils import counters

        def done() -> tuple[int, int]:  # graphs Inductor loaded from its cache, graphs Dynamo captured
            return counters["inductor"]["fxgraph_cache_hit"], counters["stats"]["unique_graphs"]

        before = done()
        start = time.perf_counter()
        try:
            if hasattr(model, "before_compile"):  # quantized models register their kernel's operator
                model.before_compile()
            step = DecodeStep(model, cache)
            with torch.inference_mode():
                step.run(0, min(cache.length, step.limit - 1))
        except Exception as e:  # any failure to compile leaves the eager path, which needs none of it
            step, first = None, (str(e).strip().splitlines() or [""])[0]
            reason = f"compiling failed ({type(e).__name__}: {first[:200]})"
        else:
            hits, graphs = (b - a for a, b in zip(before, done()))
            # Warm: loaded from Inductor's cache, or a graph this process already holds (a model of
            # the same shapes shares it: the weights are the graph's inputs, not its constants).
            info = CompileInfo(True, time.perf_counter() - start, hits > 0 or graphs == 0)
    info = info or CompileInfo(False, reason=reason)
    if log:
        log(info.line())
    return step, info


# Whether `tinyllm generate`/`chat` compile when told neither --compile nor --no-compile: the
# faster for a 200-token answer, compile time included (docs/runtimes.md has the measurements,
# from tools/bench_compile.py). Even from a warm cache a start traces the model for seconds, while
# a 200-token answer decodes eagerly in well under one.
DEFAULT_COMPILE = {"cpu": False, "cuda": False}
DEFAULT_WHY = {
    "cpu": "a 200-token answer: a warm start's tracing and cache load took 8.6 s for the demo model here, "
           "its eager decode about 0.5 s at 420 tok/s; compiling pays on long generations and the bench",
    "cuda": "not measured (no GPU here): a warm start's tracing and CUDA-graph capture take seconds, "
            "an eager 200-token answer well under one",
}


def default_compile(device: torch.device) -> bool:
    return DEFAULT_COMPILE.get(device.type, False)


def report() -> list[str]:
    """Lines for `tinyllm doctor`: the default per device and why, and whether compiling can run."""
    lines = []
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        on = default_compile(torch.device(device))
        why = unavailable(torch.device(device))
        lines.append(f"{device}: {'--compile' if on else '--no-compile'} by default ({DEFAULT_WHY[device]})"
                     + (f"; but it cannot run here: {why}" if why else ""))
    lines.append(f"compiled graphs cached in {cache_dir()}")
    return lines
