"""The native kernel for quantized matmuls (and float32 ones at batch 1): `kernels.c`, compiled on
first use and called through ctypes.

Why it exists: PyTorch has no exact float32-activation kernel for GGML's per-32-value blocks
(`_weight_int8pack_mm` takes one scale per row; the x86 int4 kernel is vectorized for bfloat16
activations only), so without it a quantized model dequantizes every weight on every call and
decodes slower than float32. `kernels.c` reads the codes in place and sums them against the
float32 activations, exactly (see its header).

How it is built: with the system C compiler ($CC, else cc, else gcc) at -O3 -march=native, since
it runs on the machine that builds it, into a per-user cache
($XDG_CACHE_HOME or ~/.cache)/tinyllm/kernels/<hash>/ whose hash covers the source, the compiler,
the flags and the CPU, so that a home directory shared between machines never reuses another
CPU's build. The library is written to a temporary name and renamed into place: processes
building at once each get a whole file. It is threaded with OpenMP only when torch itself runs on
libgomp, and then linked against the very libgomp torch loaded, so that both share one thread pool
instead of two pools of spinning threads fighting over the cores. No compiler, or a failed build,
is not an error: `load()` returns None, `status()` says why, and the modules use torch's paths.

How a compiled graph calls it: as the torch operator `tinyllm::native_matmul` (torch.library:
a schema and a fake implementation that gives the output's shape), so that the compiled decode
step (tinyllm/runtime/compiled.py) captures a quantized model whole, one op per matrix, instead of
breaking the graph at every quantized matmul (no tracer can follow a ctypes call). Its CPU
kernel is `kernels_op.cpp`, a few lines of C++ around the same `tl_matmul`, built against torch's
headers with the C++ compiler Inductor uses (only when a model is compiled: that needs the
compiler anyway), so that no Python runs between the graph and the kernel; where it cannot be
built, `matmul` through Python. Its sibling `tinyllm::native_linear` is the kernel's float32 path, y = x W^T for
a float32 W, which the compiled decode step of a float32 model calls in nn.Linear's place: at one
row it streams W about 1.5x faster than MKL's sgemv does here (docs/runtimes.md). The ops take
the module's tensors, not a ctypes descriptor: a graph holds tensors, so a step compiled once
serves every model of the same shapes, in any process.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from tinyllm.fileio import user_cache_dir

SOURCE = Path(__file__).with_name("kernels.c")
HEADER = Path(__file__).with_name("kernels.h")
OP_SOURCE = Path(__file__).with_name("kernels_op.cpp")
FLAGS = ("-O3", "-march=native", "-fPIC")
FORMATS = {"q8_0": 0, "q4_0": 1, "q4_1": 2}  # the enum in kernels.c
F32 = 3


class Matrix(ctypes.Structure):
    """`struct tl_matrix` of kernels.c: one quantized matrix's shape and operand pointers."""

    _fields_ = [("fmt", ctypes.c_int32), ("group", ctypes.c_int32), ("n", ctypes.c_int64), ("k", ctypes.c_int64),
                ("codes", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("mins", ctypes.c_void_p)]


@dataclass(frozen=True)
class Kernel:
    """The loaded library and where it came from."""

    lib: ctypes.CDLL
    path: Path
    isa: str
    single_threaded: str  # why it was built without OpenMP, or "" when it shares torch's libgomp

    def describe(self) -> str:
        threads = f"single-threaded: {self.single_threaded}" if self.single_threaded else "OpenMP on torch's libgomp"
        return f"built ({self.isa}, {threads}) at {self.path}"


def _compiler() -> tuple[list[str] | None, str]:
    """The compiler command (its program resolved to a path), or None and why not."""
    words = shlex.split(os.environ.get("CC", "")) or ["cc" if shutil.which("cc") else "gcc"]
    found = shutil.which(words[0])
    if found is None:
        named = f"$CC={os.environ['CC']!r}" if os.environ.get("CC") else "cc or gcc"
        return None, f"no C compiler ({named} not found)"
    return [found, *words[1:]], ""


def _torch_libgomp() -> Path | None:
    """The libgomp torch has loaded into this process (Linux), if any."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1]
                if "/libgomp" in path and ".so" in path:
                    return Path(path)
    except OSError:
        pass
    return None


def cpu_id() -> str:
    # -march=native compiles for this CPU: its model and feature flags go into the cache key.
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))}))
    except OSError:
        return platform.processor() or platform.machine()


def cache_root() -> Path:
    return user_cache_dir("kernels")


def _cached_build(name: str, parts: tuple, commands: Callable[[Path], list[list[str]]]) -> tuple[Path | None, str]:
    """The library `name` keyed on `parts`, built by `commands(tmp)` (the last writes tmp/name)
    unless the cache holds it; or None and why not. Built in a temporary directory and renamed
    into place: processes building at once each get a whole file."""
    key = hashlib.sha256(b"\0".join(str(part).encode() for part in parts)).hexdigest()[:16]
    target = cache_root() / key / name
    if target.is_file():
        return target, ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            for cmd in commands(Path(tmp)):
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
                    detail = next((ln for ln in lines if "error" in ln), lines[0])
                    return None, f"`{' '.join(cmd)}` failed: {detail.strip()}"
            os.replace(Path(tmp) / name, target)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"could not build in {target.parent}: {e}"
    return target, ""


def _compiler_id(cc: list[str]) -> tuple:
    stat = os.stat(cc[0])  # a compiler upgraded in place changes size or mtime
    return cc, stat.st_size, stat.st_mtime_ns


def _compile(cc: list[str], flags: tuple[str, ...], gomp: Path | None) -> tuple[Path | None, str]:
    """The library for this source/compiler/flags/CPU, compiled unless the cache holds it; or None and why."""
    parts = (SOURCE.read_bytes(), HEADER.read_bytes(), *_compiler_id(cc), flags, gomp, platform.machine(), cpu_id())

    def commands(tmp: Path) -> list[list[str]]:
        # Two steps so that -fopenmp does not also link the system libgomp (a second OpenMP
        # runtime with its own threads): the link names the file torch loaded instead.
        omp = ["-fopenmp"] if gomp else []
        # -z defs: a compiler whose -fopenmp targets another runtime (clang's libomp) fails
        # here rather than when the library loads.
        link = [str(gomp), f"-Wl,-rpath,{gomp.parent}", "-Wl,-z,defs"] if gomp else []
        return [[*cc, *flags, *omp, "-c", str(SOURCE), "-o", str(tmp / "kernels.o")],
                [*cc, "-shared", str(tmp / "kernels.o"), *link, "-o", str(tmp / "kernels.so")]]

    return _cached_build("kernels.so", parts, commands)


def build(flags: tuple[str, ...] = FLAGS) -> tuple[Kernel | None, str]:
    """Compile (unless cached) and load the kernel with these flags: (kernel, "") or (None, why not)."""
    cc, why = _compiler()
    if cc is None:
        return None, why
    gomp = _torch_libgomp()
    path, why = _compile(cc, flags, gomp)
    single_threaded = "" if gomp else "torch runs on no libgomp to share"
    if path is None and gomp:
        path, single_threaded = _compile(cc, flags, None)[0], f"the OpenMP build failed: {why}"
    if path is None:
        return None, why
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"{path} does not load: {e}"
    lib.tl_isa.restype = ctypes.c_char_p
    ptr = ctypes.POINTER(Matrix)
    lib.tl_matmul.argtypes = [ptr, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
    lib.tl_dequantize.argtypes = [ptr, ctypes.c_void_p, ctypes.c_int]
    return Kernel(lib, path, lib.tl_isa().decode(), single_threaded), ""


@lru_cache(maxsize=None)
def status() -> tuple[Kernel | None, str]:
    """`build()` once per process: the kernel the modules use, or None and why not."""
    return build()


def load() -> Kernel | None:
    return status()[0]


def check(code: int) -> None:
    """Raise for a non-zero return code of tl_matmul / tl_dequantize."""
    if code:
        raise MemoryError("native kernel: out of memory") if code == -2 else \
            RuntimeError(f"native kernel: bad matrix descriptor (code {code})")


@lru_cache(maxsize=4096)
def _descriptor(fmt: str, group: int, n: int, k: int, codes: int, scales: int, mins: int | None) -> Matrix:
    # Keyed on everything the descriptor holds: a hit is exactly the descriptor a fresh one would
    # be, even where freed buffers' addresses were reused. Made once, a call stays one C call.
    return Matrix(FORMATS[fmt], group, n, k, codes, scales, mins)


def descriptor(fmt: str, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, group: int) -> Matrix:
    """The descriptor of W [N, K] held as QuantLinear holds it (scales [N, K/group, 1], contiguous
    CPU tensors, float32 scales: the caller checks); it must keep them alive while the kernel runs."""
    n, k = scales.shape[0], scales.shape[1] * group
    return _descriptor(fmt, group, n, k, codes.data_ptr(), scales.data_ptr(),
                       mins.data_ptr() if mins is not None else None)


def _run(matrix: Matrix, x: torch.Tensor, n: int) -> torch.Tensor:
    y = x.new_empty(*x.shape[:-1], n)
    check(load().lib.tl_matmul(matrix, x.data_ptr(), y.data_ptr(), x.numel() // x.shape[-1], torch.get_num_threads()))
    return y


def matmul(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None,
           fmt: str, group: int) -> torch.Tensor:
    """y = x W^T for float32 x [..., K] (contiguous, a few rows) on W's codes: tl_matmul."""
    return _run(descriptor(fmt, codes, scales, mins, group), x, scales.shape[0])


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y = x W^T for float32 x [..., K] and a contiguous float32 W [N, K]: tl_matmul's F32 path."""
    return _run(Matrix(F32, 0, w.shape[0], w.shape[1], w.data_ptr(), None, None), x, w.shape[0])


# The operators a compiled graph calls in `matmul`'s and `linear`'s place (see the module
# docstring): their schemas and shape functions, for tracing, registered at import; their CPU
# kernels by `register_op()`.
_LIBRARY = torch.library.Library("tinyllm", "DEF")
_LIBRARY.define("native_matmul(Tensor x, Tensor codes, Tensor scales, Tensor? mins, str fmt, int group) -> Tensor")
_LIBRARY.define("native_linear(Tensor x, Tensor w) -> Tensor")


@torch.library.register_fake("tinyllm::native_matmul", lib=_LIBRARY)
def _matmul_shape(x, codes, scales, mins, fmt, group):
    return x.new_empty(*x.shape[:-1], scales.shape[0])


@torch.library.register_fake("tinyllm::native_linear", lib=_LIBRARY)
def _linear_shape(x, w):
    return x.new_empty(*x.shape[:-1], w.shape[0])


def _op_library(kernel: Kernel) -> tuple[Path | None, str]:
    """kernels_op.cpp built against this torch's headers and linked to `kernel`'s library."""
    from torch._inductor import cpp_builder, exc
    from torch.utils import cpp_extension

    try:
        cxx = [cpp_builder.get_cpp_compiler()]  # the C++ compiler Inductor compiles with ($CXX, else g++)
    except exc.InvalidCxxCompiler:
        return None, "no C++ compiler ($CXX, g++)"
    cxx = [shutil.which(cxx[0]) or cxx[0]]
    flags = ("-O2", "-std=c++20", "-fPIC", "-shared", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    includes = [f"-I{d}" for d in (*cpp_extension.include_paths(), SOURCE.parent)]
    libs = [arg for d in cpp_extension.library_paths() for arg in (f"-L{d}", f"-Wl,-rpath,{d}")]
    parts = (OP_SOURCE.read_bytes(), HEADER.read_bytes(), *_compiler_id(cxx), flags, torch.__version__,
             torch.__file__, kernel.path)

    def commands(tmp: Path) -> list[list[str]]:
        return [[*cxx, *flags, *includes, str(OP_SOURCE), str(kernel.path), f"-Wl,-rpath,{kernel.path.parent}", *libs,
                 "-lc10", "-ltorch_cpu", "-o", str(tmp / "kernels_op.so")]]

    return _cached_build("kernels_op.so", parts, commands)


@lru_cache(maxsize=None)
def register_op() -> tuple[bool, str]:
    """Give tinyllm::native_matmul and native_linear their CPU kernels, once a process (before
    compiling a graph that calls them): kernels_op.cpp, built on first use, or, where that cannot
    be built, `matmul` and `linear` themselves, with Python between the graph and the kernel.
    Whether they are the C++ kernels, and a line saying which."""
    kernel, why = status()
    if kernel is None:
        return False, f"native kernel operators: none (the kernel cannot be built: {why})"
    path, why = _op_library(kernel)
    if path is not None:
        try:
            torch.ops.load_library(str(path))
            return True, f"native kernel operators: C++ ({path})"
        except OSError as e:
            why = f"{path} does not load: {e}"
    _LIBRARY.impl("native_matmul", matmul, "CPU")
    _LIBRARY.impl("native_linear", linear, "CPU")
    return False, f"native kernel operators: Python, a slower call (the C++ operators cannot be built: {why})"


def dequantize(codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, fmt: str,
               group: int) -> torch.Tensor:
    """W [N, K] in float32: tl_dequantize (what longer calls hand to BLAS)."""
    n, k = scales.shape[0], scales.shape[1] * group
    w = scales.new_empty((n, k))
    check(load().lib.tl_dequantize(descriptor(fmt, codes, scales, mins, group), w.data_ptr(),
                                   torch.get_num_threads()))
    return w


def report() -> str:
    """One line for `tinyllm doctor`."""
    kernel, why = status()
    return f"native kernel: {kernel.describe()}" if kernel else f"native kernel: not available: {why}"
