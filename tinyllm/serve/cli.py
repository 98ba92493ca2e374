"""`tinyllm serve MODEL`: one OpenAI-compatible endpoint for a GGUF file, a checkpoint or an ONNX directory.

The public port is bound first (a taken port fails before anything loads), then the engine starts
(llama-server as a child, or onnxruntime-genai in-process), then uvicorn serves the app on the
bound socket until Ctrl-C or SIGTERM, both of which shut down gracefully: open requests get a few
seconds, llama-server is stopped, the port is freed. A llama-server that dies on its own stops
`tinyllm serve` with its log's last lines and status 1; kill -9 of `tinyllm serve` takes
llama-server with it (tinyllm.serve.llama_server).
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from pathlib import Path

import click

from tinyllm.cli_support import Command
from tinyllm.errors import TinyLLMError

ROUTES = (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/health"))
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):
    """A size in bytes: 1048576, 512K, 1M, 2G (powers of 1024)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        if not match or int(match.group(1)) == 0:
            self.fail(f"{value!r} is not a size such as 1048576, 512K or 1M", param, ctx)
        return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads; not inherited by llama-server."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise TinyLLMError(f"port {port} on {host} is not available ({e.strerror or e}); pick another with "
                           "--port, or --port 0 for a free one") from None
    # Accepted connections inherit it. Without it every response on a kept-alive connection waited
    # out a delayed ACK (Nagle): a fixed ~44 ms per request, /health included (0.7 ms with it).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _serve(app, sock: socket.socket, engine, verbose: bool) -> str | None:
    """Run uvicorn on `sock` until a signal or the engine's death; return that death's reason."""
    import uvicorn

    from tinyllm.serve.app import watch

    config = uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose,
                            lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    failure: list[str] = []

    def fail(reason: str) -> None:
        failure.append(reason)
        server.should_exit = True

    watcher = asyncio.create_task(watch(engine, fail))
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        await engine.aclose()
    return failure[0] if failure else None


@click.command("serve", cls=Command)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default serves this machine only (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port; 0 picks a free one.")
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests generated at once, each with its own KV cache.")
@click.option("--queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests that may wait for a free slot; more get 503.")
@click.option("--ctx", type=click.IntRange(min=1), default=None,
              help="Tokens per request, prompt and answer together [the model's context].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for the model [the backend's default].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: llama.cpp offloads every layer (needs a CUDA build of llama.cpp); ONNX runs on "
                   "onnxruntime-genai's CUDA provider (needs onnxruntime-genai-cuda).")
@click.option("--n-gpu-layers", type=click.IntRange(min=0), default=None,
              help="GGUF only: layers to offload to the GPU [all with --device cuda, else 0].")
@click.option("--api-key", envvar="TINYLLM_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health [$TINYLLM_API_KEY].")
@click.option("--max-body", type=ByteSize(), default="1M", show_default=True,
              help="Largest request body accepted (e.g. 512K, 4M); larger ones get 413.")
@click.option("--alias", default=None, help="The model's id in the API [the file or directory name].")
@click.option("--llama-cpp", "llama_cpp_dir", type=click.Path(path_type=Path), default=None,
              help="Directory with llama.cpp's binaries [$TINYLLM_LLAMA_CPP, the tinyllm cache, PATH].")
@click.option("--verbose", is_flag=True, help="Show llama-server's own log and every request.")
def serve_command(model, host, port, parallel, queue, ctx, threads, device, n_gpu_layers, api_key, max_body, alias,
                  llama_cpp_dir, verbose):
    """Serve MODEL over OpenAI-compatible HTTP: a .gguf file, a checkpoint directory or an ONNX directory.

    A GGUF file runs on llama.cpp's llama-server; a checkpoint directory (float32 or quantized) is
    exported to GGUF losslessly once (cached by content) and runs there too; an ONNX directory runs on
    onnxruntime-genai. Every backend answers the same API, checks and errors:

    \b
      tinyllm serve runs/demo                   # then: OpenAI(base_url="http://127.0.0.1:8080/v1")
      tinyllm serve demo.gguf --port 0 --parallel 8
      tinyllm serve demo-onnx --api-key secret --host 0.0.0.0
    """
    from tinyllm.serve.app import create_app
    from tinyllm.serve.models import EngineOptions, open_engine

    sock = bind(host, port)
    # SIGTERM (systemd, docker stop) ends us the way Ctrl-C does: gracefully, the child stopped.
    sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    engine = None
    try:
        options = EngineOptions(ctx, threads, parallel, device, n_gpu_layers, llama_cpp_dir, verbose)
        engine = open_engine(model, alias, options, click.echo)
        app = create_app(engine, api_key=api_key, max_body=max_body, parallel=parallel, queue=queue)
        address = sock.getsockname()
        url = f"http://{address[0] if ':' not in address[0] else f'[{address[0]}]'}:{address[1]}"
        click.echo(f"serving {engine.model_id!r} with {engine.describe()}")
        for method, route in ROUTES:
            click.echo(f"  {method:<5}{url}{route}")
        click.echo(("API key required. " if api_key else "") + "Ctrl-C stops it.")
        failure = asyncio.run(_serve(app, sock, engine, verbose))
    except KeyboardInterrupt:
        click.echo("stopped.", err=True)
        return
    finally:
        if engine is not None:
            engine.close()
        sock.close()
        signal.signal(signal.SIGTERM, sigterm)
    if failure:
        raise TinyLLMError(f"{failure}; tinyllm serve stopped")
