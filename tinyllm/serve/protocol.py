"""The OpenAI wire format, once for every backend: request schemas, error bodies, response bodies.

Requests are validated with pydantic in strict mode (a number sent as a string, a bool for an
integer, an unknown role are refused), with unknown fields allowed through (clients send many; the
llama-server backend understands some of them). Every refusal is an `ApiError`, which the app turns
into OpenAI's error body `{"error": {"message", "type", "param", "code"}}` with a 4xx status.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinyllm.chat import ROLES


class ApiError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type, the field at fault, a code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal[ROLES]  # type: ignore[valid-type]  # the roles tinyllm's ChatML template knows
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Generation(_Strict):
    """What chat and completion requests share: the model, the length, sampling, stop, streaming."""

    model: str | None = None  # optional: a server holds one model (curl users often leave it out)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's, but llama-server's and onnxruntime-genai's
    seed: int | None = None
    stop: str | list[str] | None = Field(None)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request, as llama-server serves

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop: at most 4 sequences", param="stop")
        if any(not s for s in stops):
            raise ApiError(400, "stop: sequences must not be empty", param="stop")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[int]

    def requested_tokens(self) -> int | None:
        return self.max_tokens


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body, or a 400 that says what is wrong with it."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}", code="invalid_json")
    return body


_TYPE_TAGS = {"str", "int", "float", "bool"}


def validate(schema: type[_Generation], body: dict) -> _Generation:
    """The request as `schema`, or a 400 naming the first field at fault."""
    try:
        return schema.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        # pydantic names the member of a union it tried ("content.str", "prompt.list[int]"): not a field
        fields = [str(p) for p in first["loc"] if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]
        param = ".".join(fields) or None
        message = f"{param}: {first['msg']}" if param else first["msg"]
        raise ApiError(400, message, param=param, code="invalid_value") from None


def context_error(n_ctx: int, prompt_tokens: int, max_tokens: int | None, prompt_param: str) -> ApiError | None:
    """OpenAI's context_length_exceeded, when the prompt (and the tokens asked for) do not fit."""
    if prompt_tokens >= n_ctx:
        return ApiError(400, f"the prompt is {prompt_tokens} tokens and the context is {n_ctx}: shorten the "
                        "prompt (one token must be left to generate)", param=prompt_param,
                        code="context_length_exceeded")
    if max_tokens is not None and prompt_tokens + max_tokens > n_ctx:
        return ApiError(400, f"the context is {n_ctx} tokens, but {prompt_tokens + max_tokens} were asked for "
                        f"({prompt_tokens} in the prompt, {max_tokens} in max_tokens): ask for at most "
                        f"{n_ctx - prompt_tokens}", param="max_tokens", code="context_length_exceeded")
    return None


# -- responses (the ONNX backend writes them; llama-server writes its own) ----------------------------


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def answer(kind: str, id: str, model: str, text: str, finish_reason: str, usage_: dict) -> dict:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": id, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice], "usage": usage_}


def chunk(kind: str, id: str, model: str, text: str | None, finish_reason: str | None = None,
          usage_: dict | None = None, first: bool = False) -> dict:
    """One server-sent event of a stream; with `usage_` the closing usage event (no choices)."""
    if usage_ is not None:
        choices = []
    elif kind == "chat":
        delta = ({"role": "assistant", "content": text or ""} if first
                 else {} if text is None else {"content": text})
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
    event = {"id": id, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
             "created": int(time.time()), "model": model, "choices": choices}
    if usage_ is not None:
        event["usage"] = usage_
    return event


def sse(event: dict | str) -> bytes:
    return b"data: " + (event if isinstance(event, str) else json.dumps(event)).encode() + b"\n\n"


DONE = sse("[DONE]")
