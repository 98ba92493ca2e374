"""llama.cpp's own `llama-server` as a child process: start it on a GGUF file, talk to it, stop it.

`LlamaServer` starts the real binary on a loopback port (chat template from the GGUF, `--jinja`),
waits for `/health`, talks JSON over HTTP, and stops it cleanly (SIGINT, then SIGKILL of its
process group if it hangs). The child never outlives its parent: it runs in its own process group
(a terminal's Ctrl-C reaches only us, and we decide how it stops) and asks the kernel for SIGKILL
when the parent dies (PR_SET_PDEATHSIG), so even `kill -9` of tinyllm leaves nothing behind. It
answers only requests that carry a random key made for this one process (`--api-key-file`), so
other users of the machine cannot reach it around the front end on its private port.

Used by `tinyllm serve` (tinyllm.serve.llama_engine, behind the one HTTP API) and by the llama.cpp
runtime for generation.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import find_llama_cpp

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama-server binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise TinyLLMError(f"port {port} on {host} is not available ({e.strerror}); pick another with "
                               "--port, or --port 0 for a free one") from None


def wait_healthy(url: str, process: subprocess.Popen, timeout: float, what: str,
                 detail: Callable[[], str] = lambda: "") -> None:
    """Return once `url`/health answers 200; a TinyLLMError if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TinyLLMError(f"{what} exited with status {process.returncode} while starting on {url} "
                               f"{detail()}".rstrip())
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 while the model loads
        time.sleep(0.1)
    raise TinyLLMError(f"{what} did not become healthy on {url} within {timeout:.0f} s")


def die_with_parent():
    """A Popen `preexec_fn` that makes the child get SIGKILL when this process dies (Linux).

    The kernel ties the signal to the thread that forks, so start children from the main thread.
    A parent that died between fork and prctl is caught by comparing the parent's pid."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: after fork only async-signal-safe work
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class LlamaServer:
    """One llama-server process serving one GGUF file."""

    def __init__(self, model: str | Path, host: str = "127.0.0.1", port: int | None = None, ctx: int | None = None,
                 threads: int | None = None, n_gpu_layers: int = 0, parallel: int = 1,
                 llama_cpp_dir: str | Path | None = None, verbose: bool = False, alias: str | None = None):
        self.model = Path(model)
        if not self.model.is_file():
            raise TinyLLMError(f"{self.model}: no such GGUF file; write one with `tinyllm-export gguf`")
        if parallel < 1:
            raise TinyLLMError(f"--parallel {parallel}: must be at least 1")
        if ctx is not None and ctx < 1:
            raise TinyLLMError(f"--ctx {ctx}: must be positive")
        self.exe = find_llama_cpp(llama_cpp_dir).tool("llama-server")
        self.host = host
        self.port = port or free_port(host)
        self.ctx, self.threads, self.n_gpu_layers, self.parallel = ctx, threads, n_gpu_layers, parallel
        self.alias = alias or self.model.stem
        self.verbose = verbose
        self.api_key = secrets.token_hex(16)
        self.process: subprocess.Popen | None = None
        self._log_fd: int | None = None
        self._key_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def argv(self) -> list[str]:
        argv = [str(self.exe), "-m", str(self.model), "--host", self.host, "--port", str(self.port),
                "--jinja", "--no-webui", "--context-shift", "-np", str(self.parallel),
                "-ngl", str(self.n_gpu_layers), "-a", self.alias]
        if self._key_file is not None:
            argv += ["--api-key-file", str(self._key_file)]
        if self.ctx:
            # Each slot gets the full context: llama-server divides -c among its slots.
            argv += ["-c", str(self.ctx * self.parallel)]
        if self.threads:
            argv += ["-t", str(self.threads), "-tb", str(self.threads)]
        return argv

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        check_port_free(self.host, self.port)
        fd, key_file = tempfile.mkstemp(prefix="llama-server.", suffix=".key")  # 0600: ours alone
        with os.fdopen(fd, "w") as f:
            f.write(self.api_key + "\n")
        self._key_file = Path(key_file)
        out = None
        if not self.verbose:
            # The log is a file without a name: read through our descriptor, gone with us however we end.
            fd, log = tempfile.mkstemp(prefix="llama-server.", suffix=".log")
            os.unlink(log)
            self._log_fd = out = fd
        try:
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                            preexec_fn=die_with_parent())
            self._wait_healthy(timeout)
        except BaseException:  # Ctrl-C while it loads must not leave it running in its own session
            self.stop()
            raise
        finally:
            self._remove_key_file()  # read once, at start
        return self

    def _wait_healthy(self, timeout: float) -> None:
        wait_healthy(self.url, self.process, timeout, "llama-server",
                     lambda: f"with {self.model}" + (f": {tail}" if (tail := self.log_tail()) else ""))

    def log_tail(self) -> str:
        if self._log_fd is None:
            return ""
        # pread leaves the offset the child writes at alone.
        text = os.pread(self._log_fd, os.fstat(self._log_fd).st_size, 0).decode(errors="replace")
        lines = text.strip().splitlines()
        errors = [ln for ln in lines if "error" in ln.lower()] or lines
        return " | ".join(ln.strip() for ln in errors[-3:])

    def _remove_key_file(self) -> None:
        if self._key_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._key_file.unlink()
            self._key_file = None

    def stop(self) -> None:
        """SIGINT (llama-server's clean shutdown), then SIGKILL of its group if it has not gone in 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._remove_key_file()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP -------------------------------------------------------------------------------------

    def _open(self, path: str, payload: dict | None, timeout: float):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json", **self.headers})
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")[:300]
            raise TinyLLMError(f"llama-server {path}: HTTP {e.code}: {body}") from None
        except (urllib.error.URLError, ConnectionError) as e:
            raise TinyLLMError(f"llama-server {path} at {self.url}: {e}") from None

    def request(self, path: str, payload: dict | None = None, timeout: float = 300.0) -> dict:
        """POST `payload` (GET when None) and return the JSON answer."""
        with self._open(path, payload, timeout) as response:
            return json.loads(response.read())
