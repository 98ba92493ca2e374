"""Finding llama.cpp's own tools (llama-server, llama-perplexity, llama-bench, llama-quantize, …).

tinyllm never reimplements llama.cpp: GGUF files are checked, measured and served by its real
binaries. They are looked up, in order, in `--llama-cpp DIR`, `$TINYLLM_LLAMA_CPP`, the per-user
cache that `tinyllm llama-cpp install` fills (keyed by the pinned llama-cpp-python version, whose
source distribution vendors llama.cpp), and `PATH` — so a user's own build or package works too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import TinyLLMError

# The llama-cpp-python release whose sdist the installer builds llama.cpp from, and the revision of
# the installer's recipe (bumped when the build changes, so that an older cached build is not used).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BUILD_TAG = f"{LLAMA_CPP_PYTHON_VERSION}-r2"
ENV_VAR = "TINYLLM_LLAMA_CPP"
TOOLS = ("llama-server", "llama-perplexity", "llama-bench", "llama-quantize", "llama-imatrix", "llama-tokenize",
         "llama-cli")
INSTALL_COMMAND = "tinyllm llama-cpp install"
# Where a directory given by the user may keep its binaries: itself, or a llama.cpp build tree.
_BIN_SUBDIRS = (".", "bin", "build/bin")


def cache_root() -> Path:
    """tinyllm's per-user cache: $XDG_CACHE_HOME/tinyllm (~/.cache/tinyllm)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinyllm"


def cache_dir(tag: str = BUILD_TAG) -> Path:
    """The per-user cache the installer builds into: $XDG_CACHE_HOME/tinyllm/llama.cpp/<version>-r<recipe>."""
    return cache_root() / "llama.cpp" / tag


def _exe(directory: Path, name: str) -> Path | None:
    path = directory / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclass(frozen=True)
class LlamaCpp:
    """A located llama.cpp installation: where its tools are and how they were found."""

    source: str  # "--llama-cpp", "$TINYLLM_LLAMA_CPP", "cache" or "PATH"
    bin_dir: Path | None  # None for PATH: each tool is looked up on PATH on its own

    def find(self, tool: str) -> Path | None:
        if self.bin_dir is None:
            found = shutil.which(tool)
            return Path(found) if found else None
        return _exe(self.bin_dir, tool)

    def tool(self, tool: str) -> Path:
        """The path of one tool, or a TinyLLMError saying how to get it."""
        path = self.find(tool)
        if path is None:
            where = self.bin_dir if self.bin_dir is not None else "PATH"
            raise TinyLLMError(f"llama.cpp tool {tool} not found in {where} (found via {self.source}); "
                               f"build llama.cpp's tools with: {INSTALL_COMMAND}")
        return path

    def version(self) -> str:
        """What the tools report about themselves (`llama-cli --version`), one line."""
        for name in ("llama-cli", "llama-server"):
            exe = self.find(name)
            if exe is None:
                continue
            try:
                proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as err:
                return f"unknown ({err})"
            lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
                     if ln.strip().startswith("version:")]
            if lines:
                return lines[0].removeprefix("version:").strip()
        return "unknown"

    def describe(self) -> str:
        where = self.bin_dir if self.bin_dir is not None else "PATH"
        missing = [t for t in TOOLS if self.find(t) is None]
        extra = f"; missing: {', '.join(missing)}" if missing else ""
        return f"{where} (via {self.source}), version {self.version()}{extra}"


def _user_dir(directory: str | Path, source: str) -> LlamaCpp:
    """A directory the user named must hold the tools: falling through silently would hide a typo."""
    base = Path(directory).expanduser()
    for sub in _BIN_SUBDIRS:
        candidate = (base / sub).resolve()
        if _exe(candidate, "llama-server") or _exe(candidate, "llama-perplexity"):
            return LlamaCpp(source, candidate)
    raise TinyLLMError(f"{source} {base}: no llama.cpp tools (llama-server, llama-perplexity) there or in "
                       f"its bin/ or build/bin/; point it at a llama.cpp build, or build one with: "
                       f"{INSTALL_COMMAND}")


def locate(llama_cpp_dir: str | Path | None = None) -> LlamaCpp | None:
    """Find llama.cpp without failing: None when nothing is installed anywhere."""
    if llama_cpp_dir:
        return _user_dir(llama_cpp_dir, "--llama-cpp")
    if os.environ.get(ENV_VAR):
        return _user_dir(os.environ[ENV_VAR], f"${ENV_VAR}")
    cached = cache_dir() / "bin"
    if _exe(cached, "llama-server"):
        return LlamaCpp("cache", cached)
    if shutil.which("llama-server") or shutil.which("llama-perplexity"):
        return LlamaCpp("PATH", None)
    return None


def find_llama_cpp(llama_cpp_dir: str | Path | None = None) -> LlamaCpp:
    """Find llama.cpp or raise a TinyLLMError that names the install command."""
    found = locate(llama_cpp_dir)
    if found is None:
        raise TinyLLMError(f"llama.cpp's tools were not found (--llama-cpp, ${ENV_VAR}, {cache_dir() / 'bin'}, "
                           f"PATH); build them with: {INSTALL_COMMAND}")
    return found


def llama_tool(tool: str, llama_cpp_dir: str | Path | None = None) -> Path:
    """Shortcut: the path of one llama.cpp tool."""
    return find_llama_cpp(llama_cpp_dir).tool(tool)
