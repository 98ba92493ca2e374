"""The tokenizer: byte-level BPE trained with Hugging Face `tokenizers`, as llama.cpp runs it.

GPT-2's pre-tokenizer regex and byte-to-unicode alphabet, all 256 byte symbols in the vocabulary
(so any string round-trips exactly), the special tokens `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>` first in the vocabulary, no BOS added, and the ChatML template. This is exactly
llama.cpp's `gpt2` BPE tokenizer with pre-tokenizer `gpt-2`, so the same ids come out of
PyTorch, onnxruntime and llama.cpp.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinyllm.chat import CHAT_TEMPLATE, END_OF_TEXT, IM_END, IM_START, SPECIAL_TOKENS, render_chat
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_write_text

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's bytes-to-unicode table, inverted: the printable char standing for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class Tokenizer:
    """A trained byte-level BPE tokenizer with tinyllm's special tokens."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        ids = {t: hf.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise TinyLLMError(f"tokenizer lacks special tokens {missing}; train it with tinyllm")
        self.eot_id, self.im_start_id, self.im_end_id = ids[END_OF_TEXT], ids[IM_START], ids[IM_END]

    # -- building and storing -----------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        if vocab_size < MIN_VOCAB:
            raise TinyLLMError(f"vocab_size={vocab_size} is too small: the bytes and special tokens "
                               f"alone need {MIN_VOCAB}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise TinyLLMError(f"{path}: tokenizer file not found")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise TinyLLMError(f"{path}: not a valid tokenizer.json ({e})") from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.hf.to_str(pretty=True))

    def hf_tokenizer_config(self) -> dict:
        """`tokenizer_config.json` for transformers' AutoTokenizer: no BOS, ChatML template."""
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": END_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": None,
            "pad_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
            "chat_template": CHAT_TEMPLATE,
        }

    def save_hf_config(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.hf_tokenizer_config(), indent=2) + "\n")

    # -- using ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. With parse_special=False, "<|im_start|>" and friends are plain
        text, as llama.cpp's `llama-perplexity` tokenizes its input."""
        if parse_special:
            return self.hf.encode(text, add_special_tokens=False).ids
        self.hf.encode_special_tokens = True
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        finally:
            self.hf.encode_special_tokens = False

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_batch_with_offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Token ids of each text with each token's (start, end) character offsets in it."""
        return [(e.ids, e.offsets) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return render_chat(messages, add_generation_prompt)

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        alphabet = _byte_level_alphabet()
        special = set(SPECIAL_TOKENS)
        table = [b""] * self.vocab_size
        for token, i in self.hf.get_vocab(with_added_tokens=True).items():
            table[i] = token.encode("utf-8") if token in special else bytes(alphabet[c] for c in token)
        return table

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (a token may hold part of a UTF-8 character)."""
        return self._token_bytes[token_id]

    def tokens(self) -> list[str]:
        """The vocabulary in id order, in byte-level (GPT-2) spelling: what GGUF stores."""
        vocab = self.hf.get_vocab(with_added_tokens=True)
        out = [""] * len(vocab)
        for token, i in vocab.items():
            out[i] = token
        return out

    def merges(self) -> list[str]:
        """BPE merges in rank order as "a b" strings: what GGUF stores."""
        merges = json.loads(self.hf.to_str())["model"]["merges"]
        return [m if isinstance(m, str) else " ".join(m) for m in merges]

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns tokens into text as they arrive, holding back bytes of an unfinished character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending = b""

    def push(self, token_id: int) -> str:
        self.pending += self.tokenizer.token_bytes(token_id)
        # Emit the longest prefix that is complete UTF-8; at most 3 bytes can be an unfinished char.
        for cut in range(len(self.pending), max(len(self.pending) - 4, -1), -1):
            try:
                text = self.pending[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.pending = self.pending[cut:]
            return text
        # Not valid even allowing for a partial tail: emit with replacement rather than stall.
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text

    def flush(self) -> str:
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text
