"""Sampling and generation: greedy equals argmax of a full forward, seeds reproduce, the context
shifts, chats keep the newest turns, bad sampling values are refused."""

import numpy as np
import pytest
import torch

from tinyllm.errors import TinyLLMError
from tinyllm.generate import ChatSession, chat_prompt_ids, fit_prompt, generate_text, generate_tokens
from tinyllm.runtime import load_runtime
from tinyllm.sampling import Sampler, SamplingParams

GREEDY = SamplingParams(temperature=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def runtime(trained_checkpoint):
    return load_runtime(trained_checkpoint)


def test_greedy_generation_equals_uncached_argmax(runtime):
    prompt = runtime.tokenizer.encode("Mira walked to the")
    generated = list(generate_tokens(runtime, prompt, 40, Sampler(GREEDY)))
    assert len(generated) > 0
    seq = list(prompt)
    with torch.no_grad():
        for token in generated:
            logits = runtime.model(torch.tensor([seq]))[0, -1]
            assert int(logits.argmax()) == token
            seq.append(token)


def test_generation_runs_past_the_context_by_shifting(runtime):
    prompt = runtime.tokenizer.encode("The lighthouse")
    n = runtime.n_ctx + 60
    tokens = list(generate_tokens(runtime, prompt, n, Sampler(SamplingParams(seed=0))))
    assert len(tokens) == n  # no stop set: every step yields


def test_seed_reproduces_and_differs(runtime):
    def sample(seed):
        return generate_text(runtime, "Once", 30, SamplingParams(temperature=1.0, seed=seed))

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


def test_generation_stops_at_a_stop_token(runtime):
    eot = runtime.tokenizer.eot_id
    always_eot = lambda logits, history: eot  # noqa: E731 - a sampler that picks <|endoftext|>
    assert list(generate_tokens(runtime, [5, 6], 10, always_eot, stop={eot})) == []
    assert list(generate_tokens(runtime, [5, 6], 3, always_eot, stop=set())) == [eot] * 3


def test_long_prompt_is_cropped_with_a_warning(runtime):
    warnings = []
    long_prompt = "boat " * (runtime.n_ctx * 2)
    generate_text(runtime, long_prompt, 3, GREEDY, on_warning=warnings.append)
    assert len(warnings) == 1 and "dropped its first" in warnings[0]
    ids, dropped = fit_prompt(list(range(300)), 128)
    assert len(ids) == 127 and dropped == 173 and ids[-1] == 299


def test_chat_keeps_the_newest_turns_that_fit(runtime):
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        messages += [{"role": "user", "content": f"question number {i} about the harbour"},
                     {"role": "assistant", "content": f"answer number {i}"}]
    messages.append({"role": "user", "content": "last question"})
    ids, dropped = chat_prompt_ids(runtime, messages, max_new_tokens=32)
    text = runtime.tokenizer.decode(ids)
    assert dropped > 0 and len(ids) <= runtime.n_ctx - 32
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("last question<|im_end|>\n<|im_start|>assistant\n")


def test_chat_session_records_turns(runtime):
    session = ChatSession(runtime, GREEDY, max_new_tokens=20)
    streamed = []
    answer, _ = session.reply("Where does Mira live?", on_text=streamed.append)
    assert "".join(streamed) == answer
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


def test_sampler_filters():
    logits = np.array([0.0, 5.0, 4.9, -3.0, 1.0])
    top1 = Sampler(SamplingParams(temperature=1.0, top_k=1, seed=0))
    assert {top1(logits) for _ in range(20)} == {1}
    nucleus = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.5, seed=0))
    assert {nucleus(logits) for _ in range(20)} == {1}
    wide = Sampler(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, seed=0, repetition_penalty=1.0))
    assert {wide(logits) for _ in range(200)} == {1, 2}
    penalised = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0))
    assert penalised(logits, history=[1]) == 2  # 5.0 / 2 falls below 4.9


@pytest.mark.parametrize("params, message", [
    (dict(temperature=-0.1), "--temperature"),
    (dict(top_k=-1), "--top-k"),
    (dict(top_p=0.0), "--top-p"),
    (dict(top_p=1.5), "--top-p"),
    (dict(repetition_penalty=0), "--repetition-penalty"),
])
def test_out_of_range_sampling_values_are_refused(params, message):
    with pytest.raises(TinyLLMError, match=message):
        SamplingParams(**params).validate()
