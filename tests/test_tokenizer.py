"""The tokenizer: every string round-trips, bytes and special tokens are where llama.cpp expects."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.chat import SPECIAL_TOKENS
from tinyllm.errors import TinyLLMError
from tinyllm.tokenizer import Tokenizer

TRAINING_TEXT = [
    "Mira keeps a grey cat in the harbour town. It's raining; she'll stay in.",
    "<|im_start|>user\nWhere does Søren live?<|im_end|>\n<|im_start|>assistant\nIn Łódź — near the river.<|im_end|>\n",
    "Zoë counted 12 boats, then 13… “Enough,” she said.\n\n\tdef f(x):\n        return x ** 2\n",
] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TRAINING_TEXT, vocab_size=400)


# Any encodable text (unicode, control characters, emoji) mixed with pieces that stress the
# GPT-2 regex: whitespace runs, contractions, joined emoji, special-token strings.
hostile_text = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=8),
        st.sampled_from([" ", "\n\n", "\t", "\r\n", "    ", "\u00a0", "😀", "👩‍👩‍👧", "'s", "'ll", "ë",
                         "\x00", "<|im_start|>", "<|endoftext|>", "123456"]),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_any_string_round_trips(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode(text, parse_special=False)) == text


@settings(max_examples=150, deadline=None)
@given(hostile_text)
def test_streaming_decode_equals_decode(tokenizer, text):
    decoder = tokenizer.stream_decoder()
    streamed = "".join(decoder.push(i) for i in tokenizer.encode(text)) + decoder.flush()
    assert streamed == text


def test_long_whitespace_runs_round_trip(tokenizer):
    for text in (" " * 1000, "\n" * 500 + "x", "\t \t " * 200, "a" + " " * 300 + "b"):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_come_first_and_are_single_ids(tokenizer):
    assert [tokenizer.eot_id, tokenizer.im_start_id, tokenizer.im_end_id] == [0, 1, 2]
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(token) == [i]
        assert len(tokenizer.encode(token, parse_special=False)) > 1  # plain text, as llama-perplexity reads it


def test_every_byte_is_a_token(tokenizer):
    singles = {tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)}
    assert all(bytes([b]) in singles for b in range(256))


def test_vocabulary_size_and_merges(tokenizer):
    assert tokenizer.vocab_size == 400
    assert len(tokenizer.merges()) == 400 - 256 - len(SPECIAL_TOKENS)
    assert tokenizer.tokens()[:3] == list(SPECIAL_TOKENS)


def test_no_bos_is_added(tokenizer):
    assert tokenizer.encode("hello")[0] != tokenizer.eot_id


def test_chat_template_renders_chatml(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "hi"}])


def test_save_load_and_bad_files(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.encode("Zoë's 42 boats") == tokenizer.encode("Zoë's 42 boats")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TinyLLMError, match="bad.json: not a valid tokenizer.json"):
        Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(TinyLLMError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")


def test_too_small_vocabulary_is_refused():
    with pytest.raises(TinyLLMError, match="too small"):
        Tokenizer.train(["abc"], vocab_size=100)
