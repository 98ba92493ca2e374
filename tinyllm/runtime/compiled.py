"""The compiled decode step: one token through the whole model as one compiled graph.

Why: eager PyTorch runs a tiny model's token as a few hundred small ops, each with microseconds
of Python and dispatch around it, so the weights are not what a token costs (docs/runtimes.md has
the figures). gpt-fast's recipe removes that: `model.KVCache` has one shape for every position
and `Transformer.forward_at` takes the position as a tensor, so one graph with static shapes
serves every decode step. How it is compiled depends on the device:

  cpu   AOTInductor, torch.compile's ahead-of-time form: the step is exported (torch.export) and
        Inductor compiles it, kernels and the wrapper that calls them, into one C++ library
        (a .pt2 package) that runs with no Python inside: no Dynamo guards and no Python wrapper,
        which at ~1 ms a token were half of torch.compile's step on the demo model. Float32
        matmuls run on the native kernel's float32 path (`tinyllm::native_linear`), quantized
        ones on its codes (`tinyllm::native_matmul`), wherever quantize/native.py could build
        them, and attention is written as products and sums that Inductor fuses
        (`ReducedAttention`) instead of a call of the flash-attention kernel. The weights and the cache are the step's inputs, not constants baked into it, so
        one package serves every model of the same shapes and scheme.
  cuda  torch.compile (Inductor) with CUDA graphs (mode="reduce-overhead"): one graph replay a
        token. Written to be right, not run: the project's machine has no GPU.

Prefill stays eager: its length varies (a graph per length, or dynamic shapes), and a prompt is
one call, so Python's cost is paid once per answer, not once per token.

Compiling is paid once per machine. A CPU package is kept under tinyllm's cache
(~/.cache/tinyllm/inductor/aoti, or $TORCHINDUCTOR_CACHE_DIR/aoti), keyed on the exported graph,
its input shapes, the thread count (Inductor fixes it in the kernels), torch, the CPU and the
compiler: a warm start exports the step again (about a second) and loads the library. CUDA
graphs live in Inductor's own FX-graph cache there. The first step is timed and said in one
line. Without a toolchain nothing fails: the runtime decodes eagerly and one line says why.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from tinyllm.fileio import user_cache_dir
from tinyllm.model import Attention, KVCache, Transformer

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# Read before anything imports torch._dynamo, which sets the variable to torch's default (/tmp).
_USER_CACHE_DIR = os.environ.get(CACHE_ENV)


@dataclass
class CompileInfo:
    """What became of compiling: for the log line, `tinyllm doctor` and the bench's rows."""

    compiled: bool
    seconds: float | None = None  # the first step, compile (or cache load) included
    cached: bool | None = None  # the cache held the compiled step: a warm start
    reason: str = ""  # why decoding is eager, when it is
    how: str = ""  # what compiled it, e.g. "AOTInductor"

    def line(self) -> str:
        if not self.compiled:
            return f"torch.compile: off, decoding eagerly: {self.reason}"
        done = "loaded from the cache" if self.cached else f"compiled (cached in {cache_dir()} for the next start)"
        return f"torch.compile: decode step ({self.how}) {done} in {self.seconds:.1f} s"


def cache_dir() -> str:
    """Where compiled steps are kept: the user's $TORCHINDUCTOR_CACHE_DIR, else tinyllm's cache
    (Inductor reads the variable at each lookup)."""
    os.environ[CACHE_ENV] = _USER_CACHE_DIR or str(user_cache_dir("inductor"))
    return os.environ[CACHE_ENV]


def unavailable(device: torch.device) -> str:
    """Why compiling cannot run on `device` here ("" when it can), checked without compiling."""
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


class Step:
    """The decode step's interface: logits [1, vocab] for one token, at a position or the next.

    Calls reuse two small input tensors (token, position), so the graph sees the same inputs every
    step; the logits it returns are only valid until the next call (CUDA graphs replay into the
    same output), which is why callers copy them out at once.
    """

    def __init__(self, model: Transformer, cache: KVCache):
        self.model, self.cache = model, cache
        device = cache.keys[0].device
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.limit = min(cache.max_len, model.config.max_seq_len)
        self.cached = False  # whether the compiled code came from a cache

    def run(self, token: int, position: int) -> torch.Tensor:
        """Logits [1, vocab] for `token` at `position`, whose key and value it writes."""
        raise NotImplementedError

    def first_run(self) -> None:
        """One untimed step (compiling, or loading, what has not been yet), at the first unfilled
        position, which stays unfilled."""
        with torch.inference_mode():
            self.run(0, min(self.cache.length, self.limit - 1))

    def __call__(self, token: int) -> torch.Tensor:
        """Logits [1, vocab] for `token` at the next position; the cache advances by one."""
        position = self.cache.length
        if position >= self.limit:
            raise ValueError(f"{position + 1} positions exceed the context of {self.limit}")
        logits = self.run(token, position)
        self.cache.length += 1
        return logits


class GraphStep(Step):
    """CUDA: `model.forward_at` under torch.compile, one CUDA graph replay a token."""

    how = "torch.compile, CUDA graphs"

    def __init__(self, model: Transformer, cache: KVCache):
        super().__init__(model, cache)
        # CUDA graphs skip graphs that mutate inputs unless those sit at fixed addresses.
        for t in cache.keys + cache.values:
            torch._dynamo.mark_static_address(t)
        self.compiled = torch.compile(self._step, fullgraph=True, dynamic=False, mode="reduce-overhead")

    def _step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.forward_at(token, pos, self.cache)[:, -1]

    def run(self, token: int, position: int) -> torch.Tensor:
        self.token.fill_(token)
        self.pos.fill_(position)
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(self.token, self.pos)

    def first_run(self) -> None:
        from torch._dynamo.utils import counters

        before = counters["inductor"]["fxgraph_cache_hit"], counters["stats"]["unique_graphs"]
        super().first_run()
        hits, graphs = counters["inductor"]["fxgraph_cache_hit"] - before[0], counters["stats"]["unique_graphs"] - before[1]
        # Warm: loaded from Inductor's cache, or a graph this process already holds.
        self.cached = hits > 0 or graphs == 0


class NativeLinear(nn.Module):
    """nn.Linear (no bias) on the native kernel's float32 path: one `tinyllm::native_linear` op."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight  # the same parameter: names, and ties, stay the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.tinyllm.native_linear(x.contiguous(), self.weight)


class ReducedAttention(Attention):
    """Attention whose core is written as products and sums, which Inductor fuses into its own
    loops, where scaled_dot_product_attention stays a call of the CPU flash-attention kernel:
    at one query row that kernel's setup cost a fifth of a demo model's int4 token (perf).
    Cached passes only (the step's): it takes the cache's mask."""

    def attend(self, q, k, v, mask):
        B, H, T, D = q.shape
        n_kv = k.shape[1]
        q = q.view(B, n_kv, H // n_kv, T, 1, D)
        scores = (q * k.view(B, n_kv, 1, 1, -1, D)).sum(-1) * D ** -0.5  # [B, n_kv, group, T, S]
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return (weights.unsqueeze(-1) * v.view(B, n_kv, 1, 1, -1, D)).sum(-2).reshape(B, H, T, D)


def _decode_twin(model: Transformer, native_linears: bool) -> Transformer:
    """A copy of the model's module tree, sharing its tensors, for the CPU step: ReducedAttention,
    and float32 nn.Linear layers as NativeLinear when the native operators are built."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, shared)
    for module in list(twin.modules()):
        if type(module) is Attention:
            module.__class__ = ReducedAttention  # the same module and tensors; only `attend` differs
        for child, sub in list(module.named_children()):
            if native_linears and type(sub) is nn.Linear and sub.bias is None and sub.weight.dtype == torch.float32:
                setattr(module, child, NativeLinear(sub))
    return twin


class _ForwardAt(nn.Module):
    """`forward_at` for one token on a cache made of the given tensors: what is exported."""

    def __init__(self, model: Transformer, cache: KVCache):
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, token, pos, keys, values):
        view = copy.copy(self.cache)  # the cache's bookkeeping, on the graph's own input tensors
        view.keys, view.values = list(keys), list(values)
        return self.model.forward_at(token, pos, view)[:, -1]


class _Exported(nn.Module):
    """The step as a pure function of its inputs: token, position, every weight, the cache."""

    def __init__(self, step: _ForwardAt, names: list[str]):
        super().__init__()
        self.step, self.names = step, names

    def forward(self, token, pos, weights, keys, values):
        return torch.func.functional_call(self.step, dict(zip(self.names, weights)), (token, pos, keys, values))


class PackagedStep(Step):
    """CPU: the step exported and compiled by AOTInductor into a package, loaded from the cache
    when it holds one; called with one flat list of input tensors, no Python in between."""

    how = "AOTInductor"

    def __init__(self, model: Transformer, cache: KVCache):
        super().__init__(model, cache)
        from quantize import native

        in_cpp = False
        if native.load() is not None:
            in_cpp, ops = native.register_op()
            # without the C++ operators the quantized matmuls call back into Python: slower, and said
            self.how += ", float32 matmuls on the native kernel" if in_cpp else f"; {ops}"
        model = _decode_twin(model, native_linears=in_cpp)
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        names, weights = list(state), list(state.values())
        self.inputs = [self.token, self.pos, *weights, *cache.keys, *cache.values]
        self.slots = self.token.numpy(), self.pos.numpy()  # written through numpy: no torch op per step
        exported = _Exported(_ForwardAt(model, cache), [f"model.{n}" for n in names])
        with torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(exported, (self.token, self.pos, weights, cache.keys, cache.values),
                                          strict=False)
        # What the graph calls, op by op (tests check that every matmul is a native operator).
        self.graph_ops = Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")
        path = self._package(program)
        self.loader = torch._inductor.aoti_load_package(str(path)).loader

    def _package(self, program) -> Path:
        """The compiled package of `program`: from the cache, else compiled now and renamed into it
        (processes compiling at once each write a whole file)."""
        from quantize import native
        from torch._inductor import cpp_builder

        cxx = shutil.which(cpp_builder.get_cpp_compiler()) or cpp_builder.get_cpp_compiler()
        parts = (program.graph_module.code, [(tuple(t.shape), t.stride(), t.dtype) for t in self.inputs],
                 torch.__version__, torch.get_num_threads(), native.cpu_id(), cxx, os.stat(cxx).st_mtime_ns)
        key = hashlib.sha256(repr(parts).encode()).hexdigest()[:20]
        path = Path(cache_dir()) / "aoti" / f"{key}.pt2"
        self.cached = path.is_file()
        if not self.cached:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{key}.{os.getpid()}.pt2")
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        return path

    def run(self, token: int, position: int) -> torch.Tensor:
        self.slots[0][0, 0], self.slots[1][0] = token, position
        return self.loader.boxed_run(self.inputs[:])[0]  # boxed: it consumes the list it is given


def prepare(model: Transformer, cache: KVCache,
            log: Callable[[str], None] | None = None) -> tuple[Step | None, CompileInfo]:
    """A compiled decode step on `cache`, compiled now (or loaded from the cache) and run once
    untimed, or None and why not; says which in one line to `log`. The cache is left as it was:
    the step writes the first unfilled position, which stays unfilled."""
    device = cache.keys[0].device
    cache_dir()
    reason = unavailable(device)
    step = info = None
    if not reason:
        start = time.perf_counter()
        try:
            step = (GraphStep if device.type == "cuda" else PackagedStep)(model, cache)
            step.first_run()
        except Exception as e:  # any failure to compile leaves the eager path, which needs none of it
            step, first = None, (str(e).strip().splitlines() or [""])[0]
            reason = f"compiling failed ({type(e).__name__}: {first[:200]})"
        else:
            info = CompileInfo(True, time.perf_counter() - start, step.cached, how=step.how)
    info = info or CompileInfo(False, reason=reason)
    if log:
        log(info.line())
    return step, info


# Whether `tinyllm generate`/`chat` compile when told neither --compile nor --no-compile: the
# faster for a 200-token answer, compile time included (docs/runtimes.md has the measurements,
# from tools/bench_compile.py). Even from a warm cache a start exports the model for seconds, while
# a 200-token answer decodes eagerly in well under one.
DEFAULT_COMPILE = {"cpu": False, "cuda": False}
DEFAULT_WHY = {
    "cpu": "a 200-token answer: a warm start's export and package load took 3.4 s for the demo model here, "
           "its eager decode 0.4 s at 500 tok/s; compiling (1,450 tok/s) pays after ~2,600 tokens and in the bench",
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
