"""`tinyllm llama-cpp install`: build llama.cpp's own tools from the llama-cpp-python sdist on PyPI.

Debian has no llama.cpp package and these machines reach no source host, but the sdist of
llama-cpp-python vendors llama.cpp's full source (tools/server, tools/perplexity, …). The
installer downloads the pinned sdist with pip, builds only the tools tinyllm uses, statically (a
shared build records absolute library paths, so its binaries break once the build tree is gone),
and installs them into the per-user cache that `tinyllm.llama_cpp` searches:
$XDG_CACHE_HOME/tinyllm/llama.cpp/<version>-r<recipe>/bin. A second run returns at once.
The `PATCHES` are applied to the source first: a log flush at exit and AMX kept off.

It lives in the package, not in the checkout, so that a `pip install`ed tinyllm sets itself up.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import click

from tinyllm.cli_support import Group
from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import LLAMA_CPP_PYTHON_VERSION, TOOLS, cache_dir

# Everything that would reach the network at build time is off: curl model downloads, the
# prebuilt web UI (fetched from Hugging Face), OpenSSL (HTTPS is not needed on loopback).
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    f"-DLLAMA_BUILD_COMMIT=llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}",
]


# The changes made to llama.cpp's source before it is built, each (file, anchor, replacement, why);
# each anchor must occur exactly once, so a llama.cpp whose source has moved stops the build.
PATCHES = [
    # llama.cpp logs from a background thread that nothing joins at exit (llama.cpp issue 22142): on
    # a busy machine the last lines of a run, llama-perplexity's final estimate among them, are lost.
    # Join that thread at exit, after it has written everything.
    ("common/log.cpp",
     "        log = new common_log;\n",
     "        log = new common_log;\n"
     "        std::atexit([]() { common_log_pause(common_log_main()); });  // tinyllm: flush at exit\n",
     "the log flush at exit"),
    # On a CPU with AMX (Intel Sapphire Rapids and later) -march=native compiles ggml's AMX
    # matmul, which segfaults on our quantized models (ggml_backend_amx_mul_mat; llama.cpp issue
    # 20824, closed unfixed). Build without it: the AVX-512/VNNI paths and q4_0 repacking stay.
    ("ggml/src/ggml-cpu/CMakeLists.txt",
     "list(APPEND ARCH_FLAGS -march=native)",
     "list(APPEND ARCH_FLAGS -march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)",
     "AMX off under -march=native"),
]


def patch_source(source: Path) -> None:
    for name, anchor, replacement, why in PATCHES:
        path = source / name
        text = path.read_text(encoding="utf-8")
        if text.count(anchor) != 1:
            raise TinyLLMError(f"{path} has changed shape; revisit the patch for {why} for this llama.cpp version")
        path.write_text(text.replace(anchor, replacement), encoding="utf-8")


def run(cmd: list[str], **kwargs) -> None:
    click.echo("+ " + " ".join(cmd))
    try:
        subprocess.run(cmd, check=True, **kwargs)
    except subprocess.CalledProcessError as e:
        raise TinyLLMError(f"{Path(cmd[0]).name} failed with status {e.returncode} (its output is above); "
                           "nothing was installed") from None


def check_build_tools() -> None:
    """The compilers the build needs, named before minutes of downloading and configuring."""
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise TinyLLMError(f"building llama.cpp needs {' and '.join(missing)} on PATH; install them "
                           "(Debian/Ubuntu: apt-get install cmake g++) and run `tinyllm llama-cpp install` again")


def download_source(work: Path) -> Path:
    """The sdist via pip (PyPI is the one host these machines reach), unpacked; returns vendor/llama.cpp."""
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(work)])
    (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
    for needed in ("tools/server", "tools/perplexity", "tools/llama-bench", "tools/quantize"):
        if not (source / needed).is_dir():
            raise TinyLLMError(f"{source} has no {needed}; pin a newer llama-cpp-python in tinyllm/llama_cpp.py")
    return source


def build(source: Path, build_dir: Path, jobs: int) -> list[Path]:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_OPTIONS])
    # llama-tokenize is optional upstream: build it only where this llama.cpp still has it.
    targets = [t for t in TOOLS if t != "llama-tokenize" or (source / "tools" / "tokenize").is_dir()]
    run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target", *targets])
    return [build_dir / "bin" / t for t in targets]


def install(jobs: int = 2, force: bool = False) -> Path:
    """Build the tools into the cache unless they are there already; return their bin/ directory."""
    if jobs < 1:
        raise TinyLLMError(f"--jobs {jobs}: must be at least 1")
    root = cache_dir()
    bin_dir = root / "bin"
    root.mkdir(parents=True, exist_ok=True)
    # Concurrent callers (make test beside a manual run) wait for one build instead of racing it.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if bin_dir.is_dir() and not force:  # bin/ only ever appears complete
            click.echo(f"llama.cpp tools (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}) already in {bin_dir}")
            return bin_dir
        check_build_tools()
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="build.", dir=root) as tmp:
            work = Path(tmp)
            source = download_source(work)
            patch_source(source)
            binaries = build(source, work / "build", jobs)
            staged = work / "bin"
            staged.mkdir()
            for exe in binaries:
                shutil.copy2(exe, staged / exe.name)
            # Swap the finished bin/ in whole, so a reader never sees half of the tools.
            if bin_dir.exists():
                shutil.rmtree(bin_dir)
            os.replace(staged, bin_dir)
        minutes = (time.monotonic() - start) / 60
        click.echo(f"built llama.cpp tools (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}) in {minutes:.1f} min")
    click.echo(f"llama.cpp tools in {bin_dir}: {', '.join(sorted(p.name for p in bin_dir.iterdir()))}")
    return bin_dir


@click.group("llama-cpp", cls=Group)
def llama_cpp_group():
    """llama.cpp's own tools (llama-server, llama-perplexity, llama-bench, llama-quantize, …)."""


@llama_cpp_group.command("install")
@click.option("--jobs", "-j", type=int, default=lambda: int(os.environ.get("JOBS", "2")), show_default="2, or $JOBS",
              help="Parallel compile jobs.")
@click.option("--force", is_flag=True, help="Rebuild even if the cache holds the tools.")
def install_command(jobs, force):
    """Build llama.cpp's tools from the pinned llama-cpp-python sdist on PyPI into the tinyllm cache.

    Needs cmake and a C++ compiler; takes several minutes once, then returns at once. The tools
    land in $XDG_CACHE_HOME/tinyllm/llama.cpp/<version>-r<recipe>/bin, where every tinyllm command
    finds them.
    """
    install(jobs, force)
