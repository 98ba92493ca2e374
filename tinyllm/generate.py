"""Generation and chat on any runtime: prompt fitting, the cached decode loop, streaming text.

The loop prefills the prompt once and then feeds one token at a time through the runtime's KV
cache. When the cache is full it keeps the newest half of the text and prefills that again (the
context shift llama.cpp does), so generation can run past the context length.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from tinyllm.runtime.base import Runtime
from tinyllm.sampling import Sampler, SamplingParams


def fit_prompt(ids: list[int], n_ctx: int) -> tuple[list[int], int]:
    """Crop a prompt from the left so one new token still fits; return (ids, tokens dropped)."""
    room = n_ctx - 1
    if len(ids) <= room:
        return ids, 0
    return ids[-room:], len(ids) - room


def stop_ids(runtime: Runtime) -> set[int]:
    return {runtime.tokenizer.eot_id, runtime.tokenizer.im_end_id}


def generate_tokens(runtime: Runtime, prompt_ids: Sequence[int], max_new_tokens: int,
                    sampler: Sampler, stop: set[int] | None = None) -> Iterator[int]:
    """Yield new token ids until a stop token (not yielded) or `max_new_tokens`.

    The prompt must already fit (see `fit_prompt`); an empty prompt starts from <|endoftext|>.
    """
    history = list(prompt_ids) or [runtime.tokenizer.eot_id]
    runtime.reset()
    logits = runtime.forward(history)[-1]
    for _ in range(max_new_tokens):
        token = sampler(logits, history)
        if stop and token in stop:
            return
        yield token
        history.append(token)
        if runtime.cache_length >= runtime.n_ctx:
            keep = history[-(runtime.n_ctx // 2):]
            runtime.reset()
            logits = runtime.forward(keep)[-1]
        else:
            logits = runtime.forward([token])[-1]


def generate_text(runtime: Runtime, prompt: str, max_new_tokens: int, params: SamplingParams,
                  on_text: Callable[[str], None] | None = None,
                  on_warning: Callable[[str], None] | None = None) -> str:
    """Generate a continuation of `prompt`, streaming decoded text to `on_text` as it comes."""
    ids, dropped = fit_prompt(runtime.tokenizer.encode(prompt), runtime.n_ctx)
    if dropped and on_warning:
        on_warning(f"prompt is longer than the context ({runtime.n_ctx} tokens): "
                   f"dropped its first {dropped} tokens")
    return _stream(runtime, ids, max_new_tokens, Sampler(params), on_text)


def _stream(runtime: Runtime, ids: list[int], max_new_tokens: int, sampler: Sampler,
            on_text: Callable[[str], None] | None) -> str:
    decoder = runtime.tokenizer.stream_decoder()
    pieces = []
    for token in runtime.generate(ids, max_new_tokens, sampler, stop_ids(runtime)):
        piece = decoder.push(token)
        pieces.append(piece)
        if on_text and piece:
            on_text(piece)
    tail = decoder.flush()
    if on_text and tail:
        on_text(tail)
    return "".join(pieces) + tail


def chat_prompt_ids(runtime: Runtime, messages: list[dict], max_new_tokens: int) -> tuple[list[int], int]:
    """Token ids for a chat prompt, keeping the newest turns that leave room for the answer.

    A leading system message is always kept; older turns are dropped first. Returns the ids and
    how many messages were dropped. If even the newest message is too long it is cropped.
    """
    tokenizer = runtime.tokenizer
    budget = max(1, runtime.n_ctx - max_new_tokens)
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    for start in range(len(turns)):
        ids = tokenizer.encode(tokenizer.apply_chat_template(system + turns[start:]))
        if len(ids) <= budget:
            return ids, start
    ids = tokenizer.encode(tokenizer.apply_chat_template(system + turns[-1:]))
    return fit_prompt(ids, runtime.n_ctx)[0], max(0, len(turns) - 1)


class ChatSession:
    """A multi-turn conversation with one runtime; each answer is streamed as it is generated."""

    def __init__(self, runtime: Runtime, params: SamplingParams, max_new_tokens: int = 200,
                 system: str | None = None):
        self.runtime = runtime
        self.sampler = Sampler(params)
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> tuple[str, int]:
        """Answer a user turn; returns (answer, number of old messages that no longer fit)."""
        self.messages.append({"role": "user", "content": user_text})
        ids, dropped = chat_prompt_ids(self.runtime, self.messages, self.max_new_tokens)
        answer = _stream(self.runtime, ids, self.max_new_tokens, self.sampler, on_text)
        self.messages.append({"role": "assistant", "content": answer})
        return answer, dropped
