"""Serving a GGUF file with llama.cpp's own `llama-server`: the process wrapper and `tinyllm serve`.

`LlamaServer` starts the real binary on a loopback port (chat template from the GGUF, `--jinja`),
waits for `/health`, talks JSON over HTTP, and stops it cleanly (SIGINT, then SIGKILL if it
hangs). `tinyllm serve` runs one in the foreground until Ctrl-C; the llama.cpp runtime uses the
same wrapper for generation.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
import click

from tinyllm.cli_support import Command
from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import find_llama_cpp

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/completion", "/tokenize", "/health")
_LOG_TAIL = 15


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


class LlamaServer:
    """One llama-server process serving one GGUF file."""

    def __init__(self, model: str | Path, host: str = "127.0.0.1", port: int | None = None, ctx: int | None = None,
                 threads: int | None = None, n_gpu_layers: int = 0, parallel: int = 1,
                 llama_cpp_dir: str | Path | None = None, verbose: bool = False):
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
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        argv = [str(self.exe), "-m", str(self.model), "--host", self.host, "--port", str(self.port),
                "--jinja", "--no-webui", "--context-shift", "-np", str(self.parallel),
                "-ngl", str(self.n_gpu_layers), "-a", self.model.stem]
        if self.ctx:
            # Each slot gets the full context: llama-server divides -c among its slots.
            argv += ["-c", str(self.ctx * self.parallel)]
        if self.threads:
            argv += ["-t", str(self.threads), "-tb", str(self.threads)]
        return argv

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        check_port_free(self.host, self.port)
        if self.verbose:
            out = None
        else:
            fd, log = tempfile.mkstemp(prefix="llama-server.", suffix=".log")
            self._log, out = Path(log), os.fdopen(fd, "w")
        try:
            # Its own session, so a terminal's Ctrl-C reaches us and we decide how it stops.
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT if out else None, start_new_session=True)
        finally:
            if out:
                out.close()
        try:
            self._wait_healthy(timeout)
        except BaseException:  # Ctrl-C while it loads must not leave it running in its own session
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                raise TinyLLMError(f"llama-server exited with status {self.process.returncode} while starting "
                                   f"on {self.url} with {self.model}" + (f": {tail}" if tail else ""))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.1)
        raise TinyLLMError(f"llama-server did not become healthy on {self.url} within {timeout:.0f} s")

    def log_tail(self) -> str:
        if self._log is None or not self._log.is_file():
            return ""
        lines = self._log.read_text(errors="replace").strip().splitlines()
        errors = [ln for ln in lines if "error" in ln.lower()] or lines
        return " | ".join(ln.strip() for ln in errors[-3:])

    def stop(self) -> None:
        """SIGINT (llama-server's clean shutdown), then SIGKILL if it has not gone in 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            with contextlib.suppress(FileNotFoundError):
                self._log.unlink()
            self._log = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP -------------------------------------------------------------------------------------

    def _open(self, path: str, payload: dict | None, timeout: float):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
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


@click.command("serve", cls=Command)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default serves this machine only.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port; 0 picks a free one.")
@click.option("--ctx", type=int, default=None, help="Context per request [the model's].")
@click.option("--threads", type=int, default=None, help="CPU threads [llama.cpp's default].")
@click.option("--n-gpu-layers", type=int, default=0, show_default=True,
              help="Layers to offload to a GPU (needs a GPU build of llama.cpp).")
@click.option("--parallel", type=int, default=4, show_default=True, help="Requests decoded at once.")
@click.option("--llama-cpp", "llama_cpp_dir", type=click.Path(path_type=Path), default=None,
              help="Directory with llama.cpp's binaries [$TINYLLM_LLAMA_CPP, the tinyllm cache, PATH].")
@click.option("--verbose", is_flag=True, help="Show llama-server's own log.")
def serve_command(model, host, port, ctx, threads, n_gpu_layers, parallel, llama_cpp_dir, verbose):
    """Serve MODEL (a .gguf file) with llama.cpp's llama-server: OpenAI-compatible HTTP on HOST:PORT."""
    if port < 0 or port > 65535:
        raise TinyLLMError(f"--port {port}: must be 0..65535")
    server = LlamaServer(model, host, port or None, ctx, threads, n_gpu_layers, parallel, llama_cpp_dir, verbose)
    server.start()
    click.echo(f"serving {model} with {server.exe} at {server.url}")
    for endpoint in ENDPOINTS:
        click.echo(f"  {server.url}{endpoint}")
    click.echo("Ctrl-C stops it.")
    try:
        code = server.process.wait()
    except KeyboardInterrupt:
        click.echo("stopping llama-server…", err=True)
        server.stop()
        return
    tail = server.log_tail()
    server.stop()
    raise TinyLLMError(f"llama-server stopped on its own with status {code}" + (f": {tail}" if tail else ""))
