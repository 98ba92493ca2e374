"""The llama.cpp backend of the runtime interface: a GGUF file run by llama.cpp's own tools.

llama.cpp's tools do not hand out raw logits, so this runtime does not go through `forward()`:
generation runs in a real `llama-server` (started on first use, loopback, one slot) with the same
sampling parameters mapped onto llama.cpp's sampler chain, and perplexity is `llama-perplexity -f`'s
own final estimate. The tokenizer is rebuilt from the GGUF's token list and merges, so prompts are
encoded without the checkpoint directory.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from gguf import GGUFReader, LlamaFileType, TokenType
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp import LlamaCpp, find_llama_cpp
from tinyllm.perplexity import PerplexityResult, chunks
from tinyllm.runtime.base import Runtime
from tinyllm.sampling import Sampler, SamplingParams
from tinyllm.serve.llama_server import LlamaServer
from tinyllm.tokenizer import Tokenizer

# llama-perplexity --ppl-output-type 1 prints one line per chunk (start, ppl, mean nll, sd) on stdout,
# and its chunk count and final estimate in its log.
_PPL_LINE = re.compile(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s*$")
_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks")
_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+)")
_PPL_ATTEMPTS = 5
# llama.cpp's default order applies temperature last; tinyllm's sampler applies it before top-p.
_SAMPLERS = ["penalties", "top_k", "temperature", "top_p"]


def _field(reader: GGUFReader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def read_gguf(path: Path) -> GGUFReader:
    """The GGUF file's reader, or a TinyLLMError when it is missing, unreadable or not a `llama` model."""
    if not path.is_file():
        raise TinyLLMError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(path)
    except Exception as e:  # GGUFReader raises plain ValueError/struct errors on a bad file
        raise TinyLLMError(f"{path}: not a readable GGUF file ({e})") from None
    if _field(reader, "general.architecture") != "llama":
        raise TinyLLMError(f"{path}: architecture is {_field(reader, 'general.architecture')!r}, not 'llama'")
    return reader


def tokenizer_from_gguf(reader: GGUFReader, where: Path) -> Tokenizer:
    """The byte-level BPE tokenizer a `gpt2` GGUF describes, as tinyllm's Tokenizer."""
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise TinyLLMError(f"{where}: tokenizer is not llama.cpp's gpt2 BPE; tinyllm runs GGUFs it exported")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges")
    types = _field(reader, "tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens))
    hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                merges=[tuple(m.split(" ", 1)) for m in merges]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([t for t, kind in zip(tokens, types) if kind == TokenType.CONTROL])
    return Tokenizer(hf)


class LlamaCppRuntime(Runtime):
    def __init__(self, path: Path, reader: GGUFReader, llama_cpp: LlamaCpp, device: str = "cpu",
                 threads: int | None = None):
        self.path = path
        self.llama_cpp = llama_cpp
        self.threads = threads
        self.n_gpu_layers = 0 if device == "cpu" else 999
        self.device = device
        self.tokenizer = tokenizer_from_gguf(reader, path)
        self.n_ctx = int(_field(reader, "llama.context_length"))
        self.metadata = json.loads(_field(reader, "tinyllm.extra", "{}"))
        # general.file_type, not tinyllm.type: llama-quantize copies our keys into the files it makes.
        file_type = LlamaFileType(_field(reader, "general.file_type", LlamaFileType.ALL_F32)).name
        self.gguf_type = file_type.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
        self.name = f"llama.cpp-{self.gguf_type}"
        self._server: LlamaServer | None = None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
             llama_cpp_dir: str | Path | None = None) -> "LlamaCppRuntime":
        path = Path(path)
        return cls(path, read_gguf(path), find_llama_cpp(llama_cpp_dir), device, threads)

    # -- the parts of the interface llama.cpp cannot serve ----------------------------------------

    def reset(self) -> None:
        """Nothing is cached on this side: every request to llama-server carries its whole prompt."""

    @property
    def cache_length(self) -> int:
        return 0

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        raise TinyLLMError(f"{self.path}: llama.cpp's tools do not return raw logits; llama.cpp rows come "
                           "from its own tools (generation through llama-server, perplexity through "
                           "llama-perplexity), so this needs a checkpoint or ONNX runtime instead")

    # -- generation through llama-server -----------------------------------------------------------

    def server(self) -> LlamaServer:
        """The llama-server behind this runtime, started on first use and stopped with the runtime."""
        if self._server is None:
            server = LlamaServer(self.path, ctx=self.n_ctx, threads=self.threads, n_gpu_layers=self.n_gpu_layers,
                                 parallel=1, llama_cpp_dir=self.llama_cpp.bin_dir)
            server.start()
            self._server = server
            weakref.finalize(self, server.stop)
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, sampler: Sampler | SamplingParams,
                 stop: set[int]) -> Iterator[int]:
        """New token ids from llama-server, with tinyllm's sampling parameters on llama.cpp's sampler.

        llama-server also ends at the GGUF's end-of-generation tokens (<|endoftext|>, <|im_end|>)."""
        params = sampler.params if isinstance(sampler, Sampler) else sampler.validate()
        payload = {
            "prompt": list(prompt_ids) or [self.tokenizer.eot_id],
            "n_predict": max_new_tokens,
            "temperature": params.temperature,
            "top_k": params.top_k,
            "top_p": params.top_p,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": params.repetition_penalty,
            "repeat_last_n": params.repeat_last_n,
            "seed": -1 if params.seed is None else params.seed,
            "samplers": _SAMPLERS,
            "return_tokens": True,
            "cache_prompt": False,
        }
        # Not streamed: a streamed token that ends inside a UTF-8 character never reaches the
        # client as an id, while the final answer lists every generated id.
        for token in self.server().request("/completion", payload).get("tokens", []):
            if token in stop:
                return
            yield token

    # -- perplexity through llama-perplexity -------------------------------------------------------

    def perplexity(self, text: str, n_ctx: int, progress: Callable[[int], None] | None = None) -> PerplexityResult:
        """llama-perplexity's own estimate on `text` (no BOS, chunks of n_ctx, second halves scored)."""
        tokens = self.tokenizer.encode(text, parse_special=False)
        n_chunks = len(chunks(tokens, n_ctx))
        if n_chunks < 2:
            raise TinyLLMError(f"llama-perplexity needs at least 2 chunks of n_ctx={n_ctx} tokens; the text has "
                               f"{len(tokens)} tokens: use a longer text or a smaller --ctx")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            argv = [str(self.llama_cpp.tool("llama-perplexity")), "-m", str(self.path), "-f", f.name,
                    "-c", str(n_ctx), "--ppl-output-type", "1",
                    "-ngl", str(self.n_gpu_layers)]
            if self.threads:
                argv += ["-t", str(self.threads), "-tb", str(self.threads)]
            nll, scored_chunks = self._run_perplexity(argv, progress)
        if scored_chunks != n_chunks:
            raise TinyLLMError(f"llama-perplexity cut the text into {scored_chunks} chunks where tinyllm's "
                               f"tokenizer makes {n_chunks}: the GGUF tokenizes differently from its token list")
        return PerplexityResult(math.exp(nll), nll, n_chunks * (n_ctx - n_ctx // 2 - 1), n_chunks, n_ctx)

    @staticmethod
    def _run_perplexity(argv: list[str], progress: Callable[[int], None] | None) -> tuple[float, int]:
        """Run llama-perplexity; return the final mean NLL and how many chunks it scored.

        The numbers come from its log. llama.cpp logs from a background thread that is not waited
        for at exit (llama.cpp issue 22142), so on a busy machine the last lines, the final
        estimate among them, can be lost although the run succeeded; such a run is repeated."""
        for _ in range(_PPL_ATTEMPTS):
            with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
                # The log goes to a file: a full stderr pipe would block it while we read stdout.
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, errors="replace")
                for line in proc.stdout:
                    if progress and _PPL_LINE.match(line):
                        progress(1)
                proc.wait()
                log.seek(0)
                err = log.read()
            final, n_chunks = _FINAL.search(err), _CHUNKS.search(err)
            if proc.returncode == 0 and final and n_chunks:
                return math.log(float(final.group(1))), int(n_chunks.group(1))
            if proc.returncode != 0:
                break
        lines = [ln for ln in err.strip().splitlines() if "error" in ln.lower() or "need at least" in ln]
        raise TinyLLMError(f"llama-perplexity failed (status {proc.returncode}): "
                           f"{' | '.join((lines or err.strip().splitlines() or ['no output'])[-3:])}")

    def describe(self) -> str:
        threads = f"{self.threads} threads" if self.threads else "llama.cpp's default threads"
        return (f"{self.name}: {self.path.name} on llama.cpp ({self.llama_cpp.source}, "
                f"version {self.llama_cpp.version()}), {self.device}, {threads}")
