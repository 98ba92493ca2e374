"""The one HTTP API of `tinyllm serve`, whatever serves the model behind it (a Starlette ASGI app).

The app owns everything a client sees apart from the generated text: the routes (`/health`,
`/v1/models`, `/v1/chat/completions`, `/v1/completions`), the API key (401 without it), the cap on
the request body (413), validation of every field (400, never a 500: see tinyllm.serve.protocol),
the model check (404), the context check (the prompt, and the prompt plus `max_tokens`, must fit:
400 `context_length_exceeded`), OpenAI's sampling defaults, and admission (`--parallel` requests
generate at once, `queue` more wait, beyond that 503). An `Engine` does the rest: it counts a
prompt's tokens and generates, in one piece or as server-sent events ending in `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinyllm.serve.protocol import ApiError, ChatRequest, CompletionRequest, context_error, new_id, parse_body, validate

log = logging.getLogger("tinyllm.serve")

# OpenAI's defaults, applied for every backend alike (llama-server's own would be temperature 0.8,
# top_k 40, top_p 0.95, min_p 0.05): a request that names none gets plain sampling at temperature 1.
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


@dataclass
class Job:
    """One validated generation request, ready for an engine."""

    kind: str  # "chat" or "completion"
    request: ChatRequest | CompletionRequest
    body: dict  # the JSON as sent, with max_tokens and the sampling defaults filled in
    prompt_ids: list[int]
    max_tokens: int
    stops: list[str]
    id: str
    model: str


class Engine(ABC):
    """What serves the model behind the app: llama-server (a child process) or onnxruntime-genai."""

    backend: str  # named in /v1/models and /health
    model_id: str
    n_ctx: int  # tokens per request: prompt plus generated

    @abstractmethod
    async def prompt_ids(self, kind: str, request: ChatRequest | CompletionRequest) -> list[int]:
        """The prompt as the model will see it (chat template applied), as token ids."""

    def refuse(self, kind: str, request: ChatRequest | CompletionRequest) -> None:
        """Raise an ApiError for a request this engine cannot serve as asked (default: none)."""

    @abstractmethod
    async def complete(self, job: Job) -> Response:
        """The whole answer as OpenAI's JSON."""

    @abstractmethod
    async def open_stream(self, job: Job) -> AsyncIterator[bytes]:
        """Start generating; raise an ApiError before the first byte, then yield server-sent events."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the start-up banner: what serves, how many at once, how long a context."""

    @abstractmethod
    def problem(self) -> str | None:
        """None while the engine can answer, else why not (a dead child process)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Inside the event loop, at shutdown: stop accepting work and release what is bound to the loop."""

    def close(self) -> None:
        """After the event loop: stop what outlives it (a child process)."""


class Admission:
    """At most `parallel` requests generate at once and at most `queue` wait; more get a 503."""

    def __init__(self, parallel: int, queue: int):
        self.running = asyncio.Semaphore(parallel)
        self.queue = queue
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self):
        if self.running.locked() and self.waiting >= self.queue:
            raise ApiError(503, f"the server is busy ({self.waiting} requests waiting); retry later",
                           type="server_error", code="server_busy")
        self.waiting += 1
        try:
            await self.running.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.running.release()


class Guard:
    """ASGI middleware: every route but /health needs `Authorization: Bearer <api key>` when one is set."""

    def __init__(self, app, api_key: str | None):
        self.app, self.expected = app, f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = ApiError(401, "a valid API key is needed: send the header 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")
                return await JSONResponse(error.body(), error.status)(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 past `limit` bytes (declared or sent)."""
    too_large = ApiError(413, f"the request body is larger than the server's limit of {limit:,} bytes "
                         "(tinyllm serve --max-body)", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    received = bytearray()
    async for piece in request.stream():
        received += piece
        if len(received) > limit:
            raise too_large
    return bytes(received)


def create_app(engine: Engine, api_key: str | None = None, max_body: int = 1 << 20, parallel: int = 4,
               queue: int = 64) -> Starlette:
    admission = Admission(parallel, queue)
    created = int(time.time())

    def check_model(name: str | None) -> None:
        if name is not None and name != engine.model_id:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {engine.model_id!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")

    async def job_for(request: Request, kind: str) -> Job:
        body = parse_body(await read_body(request, max_body))
        parsed = validate(ChatRequest if kind == "chat" else CompletionRequest, body)
        check_model(parsed.model)
        stops = parsed.stop_strings()
        engine.refuse(kind, parsed)
        ids = await engine.prompt_ids(kind, parsed)
        asked = parsed.requested_tokens()
        error = context_error(engine.n_ctx, len(ids), asked, "messages" if kind == "chat" else "prompt")
        if error:
            raise error
        body = {**SAMPLING_DEFAULTS, **{k: v for k, v in body.items() if v is not None}}
        body["max_tokens"] = asked or engine.n_ctx - len(ids)  # the rest of the context, never past it
        body.pop("max_completion_tokens", None)
        body["model"] = engine.model_id
        return Job(kind, parsed, body, ids, body["max_tokens"], stops, new_id(kind), engine.model_id)

    async def generate(request: Request, kind: str) -> Response:
        job = await job_for(request, kind)
        if not job.request.stream:
            async with admission.slot():
                return await engine.complete(job)
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(admission.slot())
        try:
            events = await engine.open_stream(job)
        except BaseException:
            await stack.aclose()
            raise

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for event in events:
                    yield event
            finally:  # also when the client goes away mid-stream: the engine stops and the slot frees
                await events.aclose()
                await stack.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def chat(request: Request) -> Response:
        return await generate(request, "chat")

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    def model_card() -> dict:
        return {"id": engine.model_id, "object": "model", "created": created, "owned_by": "tinyllm",
                "backend": engine.backend, "n_ctx": engine.n_ctx}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        check_model(name)
        return JSONResponse(model_card())

    async def health(request: Request) -> Response:
        problem = engine.problem()
        if problem:
            return JSONResponse({"status": "error", "error": problem}, 503)
        return JSONResponse({"status": "ok", "backend": engine.backend})

    async def api_error(request: Request, error: ApiError) -> Response:
        return JSONResponse(error.body(), error.status)

    async def http_error(request: Request, error: HTTPException) -> Response:
        message = (f"no route {request.method} {request.url.path}; the API is /v1/models, /v1/chat/completions, "
                   "/v1/completions and /health") if error.status_code in (404, 405) else str(error.detail)
        return JSONResponse(ApiError(error.status_code, message).body(), error.status_code)

    async def server_error(request: Request, error: Exception) -> Response:
        log.exception("error while answering %s %s", request.method, request.url.path)
        body = ApiError(500, f"internal error: {type(error).__name__}: {error}", type="server_error").body()
        return JSONResponse(body, 500)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                       Exception: server_error})
    app.add_middleware(Guard, api_key=api_key)
    return app


async def watch(engine: Engine, on_failure, interval: float = 0.5) -> None:
    """Call `on_failure(reason)` once the engine can no longer answer (its child process died)."""
    while True:
        await asyncio.sleep(interval)
        problem = engine.problem()
        if problem:
            on_failure(problem)
            return
