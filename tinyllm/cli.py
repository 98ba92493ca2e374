"""The `tinyllm` command: train, evaluate, generate, chat, make data, and check the install.

Each subcommand is a thin layer over a library function; user errors are printed as one line
(`Error: …`) with exit status 1.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import click

from export.cli import main as export_main
from quantize.cli import main as quantize_main
from tinyllm import __version__
from tinyllm.bench.cli import main as bench_main
from tinyllm.cli_support import Group
from tinyllm.data import BUILTIN_DEFAULT_SIZE, corpus_stats, load_documents, write_corpus
from tinyllm.errors import TinyLLMError
from tinyllm.llama_cpp_install import llama_cpp_group
from tinyllm.sampling import SamplingParams
from tinyllm.serve.cli import serve_command
from tinyllm.train_cli import train_command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tinyllm")
def main():
    """Train tiny Llama-family language models from scratch and run them.

    Start with `tinyllm train --preset demo --out runs/demo`, then
    `tinyllm generate runs/demo --prompt "Once"` or `tinyllm chat runs/demo`.
    """


main.add_command(train_command, "train")
main.add_command(export_main, "export")
main.add_command(quantize_main, "quantize")
main.add_command(serve_command, "serve")
main.add_command(bench_main, "bench")
main.add_command(llama_cpp_group)


def sampling_options(fn):
    """The sampling flags shared by `generate` and `chat`."""
    options = [
        click.option("--temperature", "-t", type=float, default=0.8, show_default=True, help="0 is greedy."),
        click.option("--top-k", type=int, default=40, show_default=True, help="0 turns it off."),
        click.option("--top-p", type=float, default=0.95, show_default=True, help="1 turns it off."),
        click.option("--repetition-penalty", type=float, default=1.1, show_default=True, help="1 turns it off."),
        click.option("--seed", type=int, default=None, help="Seed for reproducible sampling."),
        click.option("--max-new-tokens", "-n", type=int, default=200, show_default=True),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N] or auto."),
        click.option("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)."),
        click.option("--compile/--no-compile", "compile_step", default=None,
                     help="PyTorch checkpoints: decode on a compiled step (AOTInductor on the CPU; compiled on first "
                          "use and cached in ~/.cache/tinyllm/inductor; pays off on long generations) or eagerly "
                          "[default: --no-compile; `tinyllm doctor` says why]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def sampling_params(temperature, top_k, top_p, repetition_penalty, seed, max_new_tokens) -> SamplingParams:
    if max_new_tokens <= 0:
        raise TinyLLMError(f"--max-new-tokens {max_new_tokens}: must be positive")
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=repetition_penalty, seed=seed).validate()


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def stream(text: str) -> None:
    click.echo(text, nl=False)
    sys.stdout.flush()


def open_runtime(model: Path, device: str, threads: int | None, compile_step: bool | None):
    """The runtime for MODEL, ready to decode: a compiled step is compiled (or loaded) before any
    text streams, and what that cost is said in one line on stderr."""
    from tinyllm.runtime import load_runtime

    runtime = load_runtime(model, device=device, threads=threads, compile=compile_step,
                           log=lambda line: click.echo(line, err=True))
    runtime.warm_up()
    return runtime


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", default="", help="Text to continue (default: start from nothing).")
@sampling_options
def generate(model, prompt, temperature, top_k, top_p, repetition_penalty, seed, max_new_tokens, device, threads,
             compile_step):
    """Continue PROMPT with the model in MODEL (a checkpoint directory), streaming the text."""
    from tinyllm.generate import generate_text

    params = sampling_params(temperature, top_k, top_p, repetition_penalty, seed, max_new_tokens)
    runtime = open_runtime(model, device, threads, compile_step)
    stream(prompt)
    generate_text(runtime, prompt, max_new_tokens, params, on_text=stream, on_warning=warn)
    click.echo()


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--system", default=None, help="A system message that opens the conversation.")
@sampling_options
def chat(model, system, temperature, top_k, top_p, repetition_penalty, seed, max_new_tokens, device, threads,
         compile_step):
    """Talk with the model in MODEL. One line per turn; /reset starts over, /exit or Ctrl-D ends."""
    from tinyllm.generate import ChatSession

    params = sampling_params(temperature, top_k, top_p, repetition_penalty, seed, max_new_tokens)
    runtime = open_runtime(model, device, threads, compile_step)
    session = ChatSession(runtime, params, max_new_tokens, system)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"chatting with {model} ({runtime.describe()}); /reset, /exit", err=True)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session = ChatSession(runtime, params, max_new_tokens, system)
            continue
        if not line:
            continue
        if not interactive:
            click.echo(f"you> {line}")
        click.echo("assistant> ", nl=False)
        _, dropped = session.reply(line, on_text=stream)
        click.echo()
        if dropped:
            warn(f"the conversation outgrew the context: the oldest {dropped} messages were left out")


@main.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", default="validation", show_default=True,
              help="'validation' (the checkpoint's own validation split) or a UTF-8 text file.")
@click.option("--ctx", type=int, default=None, help="Chunk length n_ctx [the model's context].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--facts/--no-facts", default=True, show_default=True,
              help="Also ask the built-in world's facts in chat (seen and held-out phrasings).")
def eval_command(model, data, ctx, device, threads, facts):
    """Perplexity of MODEL by llama-perplexity's method, next to a unigram baseline, and how many of
    its world's facts it answers right."""
    from tinyllm.evaluate import evaluate_checkpoint, format_report

    click.echo(format_report(evaluate_checkpoint(model, data, ctx, device, threads, facts)))


@main.group()
def data():
    """Write out or inspect a training corpus."""


@data.command("generate")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Text file to write (documents separated by <|endoftext|>).")
@click.option("--size", type=int, default=BUILTIN_DEFAULT_SIZE, show_default=True, help="Characters to generate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def data_generate(out, size, seed, force):
    """Write the built-in synthetic corpus to a file."""
    if size <= 0:
        raise TinyLLMError(f"--size {size}: must be positive")
    docs = load_documents("builtin", size=size, seed=seed)
    write_corpus(docs, out, force=force)
    stats = corpus_stats(docs)
    click.echo(f"wrote {out}: {stats['documents']:,} documents, {stats['bytes']:,} bytes")


@data.command("stats")
@click.option("--data", "source", default="builtin", show_default=True,
              help="'builtin' or a .txt file, a directory of them, or a .jsonl file.")
@click.option("--size", type=int, default=BUILTIN_DEFAULT_SIZE, show_default=True,
              help="Characters of built-in corpus.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tokenizer", "tokenizer_from", type=click.Path(path_type=Path), default=None,
              help="Checkpoint directory whose tokenizer counts tokens [train one on the spot].")
@click.option("--vocab-size", type=int, default=4096, show_default=True,
              help="Vocabulary of the tokenizer trained on the spot.")
def data_stats(source, size, seed, tokenizer_from, vocab_size):
    """Sizes and token counts of a corpus and its train/validation split."""
    from tinyllm.checkpoint import TOKENIZER_FILE
    from tinyllm.dataset import DataSpec, load_splits, tokenize
    from tinyllm.tokenizer import Tokenizer

    train_docs, val_docs = load_splits(DataSpec(source=source, size=size, seed=seed))
    if tokenizer_from:
        tokenizer = Tokenizer.load(Path(tokenizer_from) / TOKENIZER_FILE)
    else:
        tokenizer = Tokenizer.train(train_docs, vocab_size)
    click.echo(f"corpus: {source}" + (f" (size {size:,}, seed {seed})" if source == "builtin" else ""))
    click.echo(f"{'split':<12}{'documents':>10}{'chats':>8}{'characters':>12}{'bytes':>12}{'tokens':>10}")
    for name, docs in (("train", train_docs), ("validation", val_docs)):
        s = corpus_stats(docs)
        n_tokens = len(tokenize(tokenizer, docs))
        click.echo(f"{name:<12}{s['documents']:>10,}{s['chats']:>8,}{s['characters']:>12,}{s['bytes']:>12,}"
                   f"{n_tokens:>10,}")
    click.echo(f"tokenizer: {tokenizer.vocab_size} tokens"
               + (f" from {tokenizer_from}" if tokenizer_from else " (trained on the training split)"))


@main.command()
def doctor():
    """What tinyllm finds on this machine: versions, devices, threads."""
    import importlib.metadata as md

    import torch

    from tinyllm.devices import describe_devices

    click.echo(f"tinyllm {__version__} on Python {platform.python_version()} ({platform.machine()}, "
               f"{platform.system()})")
    for package in ("torch", "numpy", "tokenizers", "safetensors", "click", "gguf", "onnx", "onnxruntime",
                    "transformers"):
        try:
            click.echo(f"  {package:<13}{md.version(package)}")
        except md.PackageNotFoundError:
            click.echo(f"  {package:<13}not installed")
    click.echo("devices:")
    for line in describe_devices():
        click.echo(f"  {line}")
    click.echo(f"torch CUDA build: {torch.version.cuda or 'none (CPU build)'}")
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        click.echo(f"onnxruntime {onnxruntime.__version__} providers: {', '.join(providers)}"
                   + ("" if "CUDAExecutionProvider" in providers
                      else " (for --device cuda on ONNX models: pip install onnxruntime-gpu)"))
    except ImportError:
        click.echo("onnxruntime: not installed (pip install onnxruntime)")
    from tinyllm.llama_cpp import INSTALL_COMMAND, LLAMA_CPP_PYTHON_VERSION, cache_dir, locate

    try:
        found = locate()
        click.echo(f"llama.cpp: {found.describe() if found else f'not found (install with: {INSTALL_COMMAND})'}")
    except TinyLLMError as e:  # $TINYLLM_LLAMA_CPP names a directory without the tools
        click.echo(f"llama.cpp: {e}")
    click.echo(f"  tinyllm's build: llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist -> {cache_dir() / 'bin'}")
    from tinyllm.runtime.compiled import report as compile_report

    click.echo("PyTorch decode step (AOTInductor on the CPU, CUDA graphs on CUDA; tinyllm generate/chat --compile/--no-compile):")
    for line in compile_report():
        click.echo(f"  {line}")
    from quantize.modules import kernel_report

    click.echo("quantized matmuls (batch-1 decode path, timed on a 256x256 matrix here):")
    for line in kernel_report():
        click.echo(f"  {line}")


if __name__ == "__main__":
    main()
