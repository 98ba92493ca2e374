"""The llama.cpp engine of `tinyllm serve`: a GGUF file served by the real `llama-server`, behind the app.

llama-server runs as a child on a private loopback port (tinyllm.serve.llama_server). The app has
validated each request before it gets here; this engine asks llama-server itself for the prompt's
tokens (its own chat template through `/apply-template`, its own tokenizer through `/tokenize`, so
the context check counts exactly what llama-server will decode), then forwards the request body
and hands back llama-server's answer as it is: the JSON in one piece, a stream chunk by chunk as it
arrives. llama-server's own refusals (4xx) reach the client unchanged.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import AsyncIterator

import httpx
from starlette.responses import Response

from tinyllm.errors import TinyLLMError
from tinyllm.runtime.llama_cpp_runtime import read_gguf
from tinyllm.serve.app import Engine, Job
from tinyllm.serve.llama_server import LlamaServer
from tinyllm.serve.protocol import ApiError, ChatRequest, CompletionRequest

_PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
# llama-server's extra filter, off so that a request means the same on every backend.
_LLAMA_DEFAULTS = {"min_p": 0.0}


def _error(status: int, content: bytes) -> ApiError:
    """llama-server's error answer as ours (it already writes OpenAI's shape)."""
    try:
        error = json.loads(content)["error"]
        message, type_ = str(error.get("message")), str(error.get("type") or "invalid_request_error")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, type_ = content.decode(errors="replace")[:300] or f"HTTP {status}", "invalid_request_error"
    return ApiError(status, f"llama-server: {message}", type=type_ if status < 500 else "server_error")


class LlamaEngine(Engine):
    backend = "llama-server"

    def __init__(self, gguf: Path, model_id: str, ctx: int | None, threads: int | None, n_gpu_layers: int,
                 parallel: int, llama_cpp_dir: Path | None, verbose: bool):
        field = read_gguf(gguf).get_field("llama.context_length")
        trained = int(field.contents()) if field is not None else None
        if ctx is not None and trained is not None and ctx > trained:
            raise TinyLLMError(f"--ctx {ctx}: {gguf} has a context of {trained} tokens; serve it with --ctx "
                               f"{trained} or less")
        self.model_id = model_id
        self.n_ctx = ctx or trained or 4096
        self.server = LlamaServer(gguf, ctx=self.n_ctx, threads=threads, n_gpu_layers=n_gpu_layers,
                                  parallel=parallel, llama_cpp_dir=llama_cpp_dir, verbose=verbose, alias=model_id)
        self._client: httpx.AsyncClient | None = None
        self.parallel = parallel

    def start(self) -> "LlamaEngine":
        self.server.start()
        return self

    def describe(self) -> str:
        return f"llama-server ({self.server.exe}), {self.parallel} requests at once, {self.n_ctx} tokens each"

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use, inside the event loop that serves: one pool of kept-alive connections.
        if self._client is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(base_url=self.server.url, headers=self.server.headers,
                                             timeout=httpx.Timeout(None, connect=10.0), limits=limits)
        return self._client

    async def _send(self, path: str, payload: dict, stream: bool = False) -> httpx.Response:
        """POST to llama-server; its refusals become ours before anything reaches the client."""
        request = self.client.build_request("POST", path, json=payload)
        try:
            response = await self.client.send(request, stream=stream)
        except httpx.HTTPError as e:
            raise ApiError(503, f"llama-server is not answering ({e})", type="server_error") from None
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            raise _error(response.status_code, content)
        return response

    async def _post(self, path: str, payload: dict) -> dict:
        return (await self._send(path, payload)).json()

    async def prompt_ids(self, kind: str, request: ChatRequest | CompletionRequest) -> list[int]:
        if kind == "completion" and isinstance(request.prompt, list):
            return list(request.prompt)
        if kind == "chat":
            messages = [m.model_dump(exclude_none=True) for m in request.messages]
            text = (await self._post("/apply-template", {"messages": messages}))["prompt"]
        else:
            text = request.prompt
        # As llama-server tokenizes prompts: special tokens parsed, BOS where the model asks for it.
        tokens = await self._post("/tokenize", {"content": text, "add_special": True, "parse_special": True})
        return tokens["tokens"]

    def _payload(self, job: Job) -> dict:
        return {**_LLAMA_DEFAULTS, **job.body}

    async def complete(self, job: Job) -> Response:
        response = await self._send(_PATHS[job.kind], self._payload(job))
        return Response(response.content, media_type="application/json")

    async def open_stream(self, job: Job) -> AsyncIterator[bytes]:
        response = await self._send(_PATHS[job.kind], self._payload(job), stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for piece in response.aiter_raw():
                    yield piece
            finally:  # closing the connection is how llama-server learns the client has gone
                await response.aclose()

        return relay()

    def problem(self) -> str | None:
        process = self.server.process
        if process is None or process.poll() is None:
            return None
        if process.returncode < 0:
            return f"llama-server was killed by {signal.Signals(-process.returncode).name}"
        tail = self.server.log_tail()
        return f"llama-server exited with status {process.returncode}" + (f": {tail}" if tail else "")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def close(self) -> None:
        self.server.stop()
