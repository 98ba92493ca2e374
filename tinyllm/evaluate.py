"""Evaluating a model: perplexity by llama.cpp's method, beside a unigram baseline, and world-fact accuracy.

The evaluation text is either a file or the checkpoint's own validation split (rebuilt from the
data source recorded in its config). It is tokenized as llama-perplexity tokenizes: once, no BOS,
special-token strings as plain text. So the validation text holds the split's documents that
contain no special-token strings (the narratives), separated by blank lines. A model trained on
the built-in corpus is also asked its world's facts in chat (`fact_eval.py`); other data has no
facts to ask, and the report says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from tinyllm.chat import SPECIAL_TOKENS
from tinyllm.dataset import DataSpec, load_splits, tokenize
from tinyllm.errors import TinyLLMError
from tinyllm.fact_eval import fact_accuracy, format_fact_accuracy
from tinyllm.perplexity import scored_targets, unigram_perplexity
from tinyllm.runtime import Runtime, load_runtime


def plain_text(docs: list[str]) -> str:
    return "\n\n".join(d for d in docs if not any(t in d for t in SPECIAL_TOKENS))


def recorded_spec(runtime: Runtime) -> DataSpec | None:
    data = runtime.metadata.get("data")
    return DataSpec.from_dict(data) if data else None


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TinyLLMError(f"{path}: evaluation text not found") from None
    except UnicodeDecodeError as e:
        raise TinyLLMError(f"{path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    except OSError as e:
        raise TinyLLMError(f"{path}: cannot read ({e.strerror})") from None
    if not text.strip():
        raise TinyLLMError(f"{path}: the evaluation text is empty")
    return text


def evaluate(runtime: Runtime, data: str = "validation", n_ctx: int | None = None,
             progress: bool = True, facts: bool = False) -> dict:
    """Perplexity of `runtime` on `data` ('validation' or a text file), with a unigram baseline
    when the checkpoint records its training data; with `facts`, world-fact accuracy too (or
    `facts_not_measured`, why not)."""
    spec = recorded_spec(runtime)
    train_docs = None
    if data == "validation":
        if spec is None:
            raise TinyLLMError("this checkpoint records no training data, so it has no validation "
                               "split; pass --data FILE")
        train_docs, val_docs = load_splits(spec)
        text = plain_text(val_docs)
    else:
        text = read_text(data)
    n_ctx = n_ctx or runtime.n_ctx
    if n_ctx > runtime.n_ctx:
        raise TinyLLMError(f"--ctx {n_ctx} is longer than the model's context ({runtime.n_ctx})")
    tokens = runtime.tokenizer.encode(text, parse_special=False)
    with tqdm(total=len(tokens) // n_ctx, desc="perplexity", unit="chunk", disable=not progress,
              file=sys.stderr, leave=False) as bar:
        result = runtime.perplexity(text, n_ctx, progress=bar.update)
    report = {"data": data, "n_ctx": n_ctx, "ppl": result.ppl, "nll": result.nll,
              "n_tokens": result.n_tokens, "n_chunks": result.n_chunks}
    if spec is not None:
        if train_docs is None:
            train_docs, _ = load_splits(spec)
        train_tokens = tokenize(runtime.tokenizer, train_docs)
        report["unigram_ppl"] = unigram_perplexity(train_tokens, scored_targets(tokens, n_ctx),
                                                   runtime.tokenizer.vocab_size)
    if facts:
        if spec is not None and spec.source == "builtin":
            report.update(fact_accuracy(runtime, progress=progress))
        else:
            trained_on = f"trained on {spec.source}" if spec else "records no training data"
            report["facts_not_measured"] = f"the model {trained_on}; only the built-in world has facts to ask"
    return report


def evaluate_checkpoint(path: str | Path, data: str = "validation", n_ctx: int | None = None,
                        device: str = "cpu", threads: int | None = None, facts: bool = True) -> dict:
    return evaluate(load_runtime(path, device=device, threads=threads), data, n_ctx, facts=facts)


def format_report(report: dict) -> str:
    line = (f"perplexity {report['ppl']:.3f} on {report['data']} ({report['n_tokens']:,} tokens scored, "
            f"{report['n_chunks']} chunks of n_ctx={report['n_ctx']}, llama-perplexity method)")
    if "unigram_ppl" in report:
        line += (f"\nunigram baseline perplexity {report['unigram_ppl']:.3f} "
                 f"(the model is {report['unigram_ppl'] / report['ppl']:.1f}x better)")
    if "facts_seen" in report:
        line += "\n" + format_fact_accuracy(report)
    elif "facts_not_measured" in report:
        line += f"\nworld-fact accuracy: not measured ({report['facts_not_measured']})"
    return line
