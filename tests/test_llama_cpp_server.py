"""llama-server on our GGUF: tokenization and greedy parity with tinyllm (`tinyllm serve`: test_serve.py).

Needs llama.cpp's binaries (`make test` builds them); skipped locally without them, failed in CI.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from export.gguf import export_gguf
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.config import preset
from tinyllm.generate import stop_ids
from tinyllm.model import Transformer
from tinyllm.runtime.llama_cpp_runtime import LlamaCppRuntime
from tinyllm.runtime.torch_runtime import TorchRuntime
from tinyllm.sampling import SamplingParams
from tinyllm.serve.llama_server import LlamaServer

pytestmark = pytest.mark.slow

HOSTILE = [
    "Hello world", " leading space", "trailing space ", "  two  spaces   three    ", "\t\ttabs\tand\nnewlines\n\n\n",
    "don't won't I'm you're they've we'll she'd DON'T I'D", "12345 3.14159 1,000,000 0x1F 2024-01-01 ½",
    "naïve café résumé Ærøskøbing", "日本語のテキスト", "Привет, мир!", "مرحبا بالعالم",
    "😀🎉👍🏽 👨‍👩‍👧‍👦", "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c[i] = d->e; }",
    "e\u0301 combining", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>",
    "text<|endoftext|>more<|im_end", "\u200b zero width \u00a0nbsp", "a\r\nb\rc", "!!!???...,,,;;;", "       ",
    "\n", "A", "ＡＢＣ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.fixture(scope="module")
def tokenizer(trained_checkpoint):
    return load_checkpoint(trained_checkpoint)[1]


@pytest.fixture(scope="module")
def server(llama_cpp, gguf_export):
    with LlamaServer(gguf_export("f32"), ctx=128) as s:
        yield s


def test_llama_server_tokenizes_exactly_like_us(server, tokenizer):
    for text in HOSTILE:
        for parse_special in (True, False):
            ids = server.request("/tokenize", {"content": text, "parse_special": parse_special})["tokens"]
            assert ids == tokenizer.encode(text, parse_special=parse_special), (text, parse_special)


def test_llama_tokenize_agrees_on_the_whole_set(llama_cpp, gguf_export, tokenizer, tmp_path):
    text = "\n".join(HOSTILE)
    path = tmp_path / "hostile.txt"
    path.write_text(text, encoding="utf-8")
    for flags, parse_special in (([], True), (["--no-parse-special"], False)):
        proc = subprocess.run([str(llama_cpp.tool("llama-tokenize")), "-m", str(gguf_export("f32")), "-f", str(path),
                               "--ids", "--no-escape", "--log-disable", *flags],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == tokenizer.encode(text, parse_special)


@pytest.fixture(scope="module")
def sharp_model(trained_checkpoint, tmp_path_factory):
    """(checkpoint, GGUF) of a random model with large, untied weights: its greedy continuations are
    varied (the 60-step fixture model mostly repeats one token), so token-for-token parity bites,
    and it covers an untied output.weight. Its special tokens' output rows are zero (logit 0 among
    random logits of a few units), so it never stops before the tests' 64 tokens."""
    _, tok = load_checkpoint(trained_checkpoint)
    torch.manual_seed(0)
    model = Transformer(preset("test").replace(tie_embeddings=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 1.0 if "embed" in name else p.shape[1] ** -0.5)
        model.lm_head.weight[[tok.eot_id, tok.im_start_id, tok.im_end_id]] = 0.0
    directory = tmp_path_factory.mktemp("sharp")
    save_checkpoint(directory / "ckpt", model, tok)
    export_gguf(directory / "ckpt", directory / "sharp.gguf", "f32", log=lambda _: None, progress=False)
    return directory / "ckpt", directory / "sharp.gguf"


@pytest.mark.parametrize("which, penalty", [("trained", 1.0), ("sharp", 1.0), ("sharp", 1.5)])
def test_greedy_generation_matches_pytorch(which, penalty, trained_checkpoint, gguf_export, sharp_model, llama_cpp):
    checkpoint, gguf = (trained_checkpoint, gguf_export("f32")) if which == "trained" else sharp_model
    ours_rt, theirs_rt = TorchRuntime.load(checkpoint), LlamaCppRuntime.load(gguf)
    params = SamplingParams(temperature=0.0, repetition_penalty=penalty)
    try:
        for prompt in ("Mira walked to the harbour", "One rainy morning"):
            ids = ours_rt.tokenizer.encode(prompt)
            ours = list(ours_rt.generate(ids, 64, params, stop_ids(ours_rt)))
            theirs = list(theirs_rt.generate(ids, 64, params, stop_ids(theirs_rt)))
            assert theirs == ours, (prompt, ours_rt.tokenizer.decode(ours), ours_rt.tokenizer.decode(theirs))
            assert len(ours) == 64
    finally:
        theirs_rt.close()
