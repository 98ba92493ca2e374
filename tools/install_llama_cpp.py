#!/usr/bin/env python3
"""Build llama.cpp's own tools from the llama-cpp-python source distribution on PyPI.

Debian has no llama.cpp package and these machines reach no source host, but the sdist of
llama-cpp-python vendors llama.cpp's full source (tools/server, tools/perplexity, …). This script
downloads the pinned sdist with pip, builds only the tools tinyllm uses, statically (a shared build
records absolute library paths, so its binaries break once the build tree is gone), and installs
them into the per-user cache that `tinyllm.llama_cpp` searches:
$XDG_CACHE_HOME/tinyllm/llama.cpp/<version>-r<recipe>/bin. A second run returns at once.
The `PATCHES` are applied to the source first: a log flush at exit and AMX kept off.

    python tools/install_llama_cpp.py [--jobs 2] [--force]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable before `pip install -e .`

from tinyllm.llama_cpp import LLAMA_CPP_PYTHON_VERSION, TOOLS, cache_dir  # noqa: E402

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
            sys.exit(f"error: {path} has changed shape; revisit the patch for {why} for this llama.cpp version")
        path.write_text(text.replace(anchor, replacement), encoding="utf-8")


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


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
            sys.exit(f"error: {source} has no {needed}; pin a newer llama-cpp-python in tinyllm/llama_cpp.py")
    return source


def build(source: Path, build_dir: Path, jobs: int) -> list[Path]:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(source), "-B", str(build_dir), *generator, *CMAKE_OPTIONS])
    # llama-tokenize is optional upstream: build it only where this llama.cpp still has it.
    targets = [t for t in TOOLS if t != "llama-tokenize" or (source / "tools" / "tokenize").is_dir()]
    run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target", *targets])
    return [build_dir / "bin" / t for t in targets]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", "-j", type=int, default=int(os.environ.get("JOBS", "2")),
                        help="parallel compile jobs (default 2, or $JOBS)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache holds the tools")
    args = parser.parse_args()

    root = cache_dir()
    bin_dir = root / "bin"
    root.mkdir(parents=True, exist_ok=True)
    # Concurrent callers (make test beside a manual run) wait for one build instead of racing it.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if bin_dir.is_dir() and not args.force:  # bin/ only ever appears complete
            print(f"llama.cpp tools (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}) already in {bin_dir}")
            return 0
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="build.", dir=root) as tmp:
            work = Path(tmp)
            source = download_source(work)
            patch_source(source)
            binaries = build(source, work / "build", args.jobs)
            staged = work / "bin"
            staged.mkdir()
            for exe in binaries:
                shutil.copy2(exe, staged / exe.name)
            # Swap the finished bin/ in whole, so a reader never sees half of the tools.
            if bin_dir.exists():
                shutil.rmtree(bin_dir)
            os.replace(staged, bin_dir)
        minutes = (time.monotonic() - start) / 60
        print(f"built llama.cpp tools (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}) in {minutes:.1f} min")
    print(f"llama.cpp tools in {bin_dir}: {', '.join(sorted(p.name for p in bin_dir.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
