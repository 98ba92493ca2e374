"""The ONNX engine of `tinyllm serve`: an onnxruntime-genai model directory, run in this process.

One `og.Model` is loaded once; each request gets its own `og.Generator` (its own KV cache). One
decode loop on the server's event-loop thread steps the live requests in turn, a token each,
yielding to the HTTP side after every step; the app's admission lets at most `--parallel` requests
be live and `--queue` more wait (a bounded queue). The chat template is the model's own
(`og.Tokenizer.apply_chat_template`, read from the directory), text is decoded with
`og.TokenizerStream` (a character split across tokens comes out whole), and the sampling fields
map onto og's search options: temperature 0 (or top_k 1) is greedy, otherwise `do_sample` with
temperature, top_k (0: off) and top_p; `seed` is `random_seed`; `max_tokens` sets `max_length`.
Generation stops at the model's end-of-sequence ids, at ChatML's <|im_end|> and <|endoftext|>, and
at the request's `stop` strings (never sent: text that might begin one is held back until it is
known not to).

Why one loop on the event-loop thread, not a generator per worker thread: og's Python binding
holds the GIL while it computes, so threads run no two steps at once anyway, and every token handed
from a worker thread to the event loop costs a forced GIL switch; measured in docs/serving.md.
Why not og's own batching `og.Engine`: on CPU it batches statically (a request that arrives while a
batch runs waits for the whole batch to finish) and it refuses a per-request seed unless the model
is built for dynamic batching with paged attention, which the CPU graphs are not.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from starlette.responses import JSONResponse, Response

from tinyllm.chat import END_OF_TEXT, IM_END
from tinyllm.errors import TinyLLMError
from tinyllm.serve.app import Engine, Job
from tinyllm.serve.protocol import DONE, ApiError, ChatRequest, CompletionRequest, answer, chunk, sse, usage

GENAI_CONFIG = "genai_config.json"


class StopStrings:
    """Text as it may be sent: everything before the first stop string, and nothing that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending = stops, ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text that is safe to send, whether a stop string was reached)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[:min(found)], ""
            return out, True
        held = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        cut = len(self.pending) - held
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class _Slot:
    """One request being generated: its own og.Generator (and so its own KV cache)."""

    job: Job
    events: asyncio.Queue
    stops: StopStrings
    generator: object = None
    decoder: object = None
    generated: int = 0
    cancelled: bool = False


def _load_og():
    try:
        import onnxruntime_genai
    except ImportError:
        raise TinyLLMError("serving an ONNX directory needs onnxruntime-genai: pip install onnxruntime-genai "
                           "(onnxruntime-genai-cuda for --device cuda)") from None
    return onnxruntime_genai


class OnnxEngine(Engine):
    backend = "onnxruntime-genai"

    def __init__(self, directory: Path, model_id: str, ctx: int | None, threads: int | None, device: str,
                 parallel: int):
        og = self.og = _load_og()
        try:
            genai = json.loads((directory / GENAI_CONFIG).read_text(encoding="utf-8"))
            trained = int(genai["model"]["context_length"])
            self.vocab_size = int(genai["model"]["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TinyLLMError(f"{directory / GENAI_CONFIG}: not a readable onnxruntime-genai config ({e})") from None
        if ctx is not None and ctx > trained:
            raise TinyLLMError(f"--ctx {ctx}: {directory} has a context of {trained} tokens; serve it with --ctx "
                               f"{trained} or less")
        try:
            config = og.Config(str(directory))
            config.clear_providers()
            if device == "cuda":
                config.append_provider("cuda")
            if threads:
                session = {"session_options": {"intra_op_num_threads": threads}}
                config.overlay(json.dumps({"model": {"decoder": session}}))
            self.model = og.Model(config)
        except Exception as e:  # og raises RuntimeError with its own message for every kind of refusal
            hint = "; for --device cuda install onnxruntime-genai-cuda" if device == "cuda" else ""
            raise TinyLLMError(f"{directory}: onnxruntime-genai cannot load it: {e}{hint}") from None
        self.tokenizer = og.Tokenizer(self.model)
        self.model_id, self.n_ctx, self.directory, self.device = model_id, ctx or trained, directory, device
        specials = (self.tokenizer.to_token_id(token) for token in (END_OF_TEXT, IM_END))
        self.stop_ids = set(self.tokenizer.eos_token_ids) | {i for i in specials if i >= 0}
        self.parallel = parallel
        self.active: list[_Slot] = []
        self._work: asyncio.Event | None = None
        self._decoder: asyncio.Task | None = None

    def describe(self) -> str:
        return (f"onnxruntime-genai {self.og.__version__} ({self.device}), {self.parallel} requests at once, "
                f"{self.n_ctx} tokens each")

    # -- prompts ------------------------------------------------------------------------------------

    def _chat_text(self, request: ChatRequest) -> str:
        messages = json.dumps([{"role": m.role, "content": m.text()} for m in request.messages])
        try:
            return self.tokenizer.apply_chat_template(messages=messages, add_generation_prompt=True)
        except Exception as e:  # no template in the directory, or one that fails on these messages
            raise ApiError(400, f"the model's chat template cannot render these messages ({e}); "
                           "send a plain prompt to /v1/completions instead", param="messages") from None

    async def prompt_ids(self, kind: str, request: ChatRequest | CompletionRequest) -> list[int]:
        if kind == "completion" and isinstance(request.prompt, list):
            bad = [t for t in request.prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise ApiError(400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})",
                               param="prompt")
            return list(request.prompt)
        text = self._chat_text(request) if kind == "chat" else request.prompt
        return [int(t) for t in self.tokenizer.encode(text)]

    def refuse(self, kind: str, request: ChatRequest | CompletionRequest) -> None:
        for name in ("logprobs", "echo", "tools", "frequency_penalty", "presence_penalty"):
            if (request.model_extra or {}).get(name) not in (None, False, 0, []):
                raise ApiError(400, f"{name}: not supported by the onnxruntime-genai backend", param=name)

    # -- generation -----------------------------------------------------------------------------------

    def _search_options(self, job: Job) -> dict:
        body = job.body
        options = {"max_length": len(job.prompt_ids) + job.max_tokens, "batch_size": 1}
        if body["temperature"] == 0 or body["top_k"] == 1:
            options["do_sample"] = False
        else:
            options.update(do_sample=True, temperature=float(body["temperature"]), top_k=int(body["top_k"]),
                           top_p=float(body["top_p"]))
        if body.get("seed") is not None:
            options["random_seed"] = int(body["seed"])
        return options

    def _step(self, slot: _Slot) -> bool:
        """One token of one request (the first step prefills its prompt too); False once it has ended.

        Emits ("text", piece)…, then ("end", finish_reason, tokens) or ("error", message)."""
        job, og = slot.job, self.og
        try:
            if slot.generator is None:
                params = og.GeneratorParams(self.model)
                params.set_search_options(**self._search_options(job))
                slot.generator = og.Generator(self.model, params)
                slot.generator.append_tokens(job.prompt_ids or sorted(self.tokenizer.eos_token_ids)[:1])
                slot.decoder = self.tokenizer.create_stream()
            slot.generator.generate_next_token()
            token = int(slot.generator.get_next_tokens()[0])
            if token in self.stop_ids:
                return self._finish(slot, "stop")
            slot.generated += 1
            text, stopped = slot.stops.push(slot.decoder.decode(token))
            if text:
                slot.events.put_nowait(("text", text))
            if stopped:
                return self._finish(slot, "stop")
            if slot.generated >= job.max_tokens or slot.generator.is_done():
                return self._finish(slot, "length")
            return True
        except Exception as e:  # og's own errors: the request fails, the server stays up
            slot.events.put_nowait(("error", f"{type(e).__name__}: {e}"))
            return False

    @staticmethod
    def _finish(slot: _Slot, reason: str) -> bool:
        tail = slot.stops.flush()  # text held back for a stop string that never came
        if tail:
            slot.events.put_nowait(("text", tail))
        slot.events.put_nowait(("end", reason, slot.generated))
        return False

    async def _decode(self) -> None:
        """The one decode loop: a token for each live request in turn, yielding to I/O after each."""
        while True:
            if not self.active:
                self._work.clear()
                await self._work.wait()
                continue
            for slot in list(self.active):
                if slot.cancelled or not self._step(slot):
                    self.active.remove(slot)
                    slot.generator = None  # its KV cache goes now, not at the next collection
                await asyncio.sleep(0)

    async def _events(self, job: Job) -> AsyncIterator[tuple]:
        if self._decoder is None:
            self._work = asyncio.Event()
            self._decoder = asyncio.get_running_loop().create_task(self._decode())
        slot = _Slot(job, asyncio.Queue(), StopStrings(job.stops))
        self.active.append(slot)
        self._work.set()
        try:
            while True:
                item = await slot.events.get()
                yield item
                if item[0] != "text":
                    return
        finally:  # also when the client has gone: the decode loop drops it before its next token
            slot.cancelled = True

    async def complete(self, job: Job) -> Response:
        pieces = []
        async for item in self._events(job):
            if item[0] == "text":
                pieces.append(item[1])
            elif item[0] == "error":
                raise ApiError(500, f"onnxruntime-genai failed: {item[1]}", type="server_error")
            else:
                _, finish, generated = item
        return JSONResponse(answer(job.kind, job.id, job.model, "".join(pieces), finish,
                                   usage(len(job.prompt_ids), generated)))

    async def open_stream(self, job: Job) -> AsyncIterator[bytes]:
        async def events() -> AsyncIterator[bytes]:
            stream = self._events(job)
            try:
                if job.kind == "chat":
                    yield sse(chunk(job.kind, job.id, job.model, "", first=True))
                async for item in stream:
                    if item[0] == "text":
                        yield sse(chunk(job.kind, job.id, job.model, item[1]))
                    elif item[0] == "error":
                        yield sse(ApiError(500, f"onnxruntime-genai failed: {item[1]}", type="server_error").body())
                    else:
                        _, finish, generated = item
                        yield sse(chunk(job.kind, job.id, job.model, None, finish))
                        if job.request.include_usage:
                            yield sse(chunk(job.kind, job.id, job.model, None,
                                            usage_=usage(len(job.prompt_ids), generated)))
                yield DONE
            finally:
                await stream.aclose()

        return events()

    def problem(self) -> str | None:
        return None

    async def aclose(self) -> None:
        if self._decoder is not None:
            self._decoder.cancel()
        self.active.clear()
