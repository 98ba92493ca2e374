"""Decode speed with the KV cache versus recomputing the whole sequence for every new token.

GuppyLM, the model of the article tinyllm started from, has no KV cache: to produce each token
it runs the entire sequence so far through the model again. tinyllm keeps every layer's keys and
values, so a new token costs one single-position forward pass. This script measures both on the
same model, batch 1, greedy (argmax) decoding, float32, `model.eval()` under
`torch.inference_mode()`:

  cached    prefill the prompt once into `model.new_cache(1, max_len=P+N)`, then feed the
            newest token alone, one forward pass per token;
  uncached  run `model(ids)` over the whole sequence so far, with no cache, for every token and
            keep only the last position's logits.

Both strategies make N new tokens. The first comes from the forward pass over the prompt (the
prefill, timed on its own and reported as prompt tokens/s); the other N−1 come from the decode
steps, and decode tokens/s = (N−1) ÷ decode time. Generation never stops early at an end-of-text
token, so every run does the same work. The cache's allocation is outside the timing. Each repeat
runs cached then uncached back to back, so a busy neighbour on a shared machine slows both alike;
`--warmup` untimed repeats come first and the table shows medians with the min–max spread.

The script also checks that both strategies chose the same greedy tokens, and that every repeat
did, and prints "tokens identical: yes/no": a correctness check, not a timing assertion. A
random-init model's greedy output is often one token repeated, which makes that check weak, so an
extra untimed pass of each strategy also records every step's logits and prints the largest
absolute difference between the two (float rounding, around 1e-6, when the cache is right). A
"no" can mean two logits within rounding of each other, hence the first differing position.

With `--preset` the model is randomly initialised. The presets' contexts can be shorter than
prompt + new tokens (demo: 256 < 32 + 256), so max_seq_len is raised to fit; that only lengthens
the RoPE table and changes no weight shape. With `--checkpoint DIR` the trained model is loaded
as it is and prompt + new tokens must fit its context; `--prompt TEXT` then uses real text as the
prompt instead of random ids.

    .venv/bin/python tools/bench_decode.py --preset demo --json runs/bench_decode.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import torch

# Run as a script from a checkout, installed or not: the sibling helper and the tinyllm package
# next to tools/ must import however it is launched.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from bench_common import (  # noqa: E402
    CpuShare, common_options, machine_info, machine_line, prompt_options, rates, set_threads, share_lines,
    spread, summarize, table, write_json)
from tinyllm.checkpoint import load_checkpoint  # noqa: E402
from tinyllm.cli_support import Command  # noqa: E402
from tinyllm.config import preset  # noqa: E402
from tinyllm.errors import TinyLLMError  # noqa: E402
from tinyllm.model import Transformer  # noqa: E402


def log(message: str) -> None:
    click.echo(message, err=True)


def _pick(logits: torch.Tensor, record: list | None) -> int:
    if record is not None:
        record.append(logits.clone())
    return int(logits.argmax())


def decode_cached(model: Transformer, prompt: torch.Tensor, n_new: int,
                  record: list | None = None) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds, new token ids) with the KV cache; `record` collects
    each step's logits for the untimed correctness pass."""
    cache = model.new_cache(1, max_len=prompt.shape[1] + n_new)
    step = torch.empty(1, 1, dtype=torch.long)
    start = time.perf_counter()
    token = _pick(model(prompt, cache)[0, -1], record)
    prefilled = time.perf_counter()
    out = [token]
    for _ in range(n_new - 1):
        step[0, 0] = token
        token = _pick(model(step, cache)[0, -1], record)
        out.append(token)
    return prefilled - start, time.perf_counter() - prefilled, out


def decode_uncached(model: Transformer, prompt: torch.Tensor, n_new: int,
                    record: list | None = None) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds, new token ids), recomputing the whole sequence each token."""
    p = prompt.shape[1]
    # One preallocated buffer, so the uncached side pays for the model and not for torch.cat.
    ids = torch.empty(1, p + n_new, dtype=torch.long)
    ids[:, :p] = prompt
    start = time.perf_counter()
    token = _pick(model(ids[:, :p])[0, -1], record)
    prefilled = time.perf_counter()
    out = [token]
    for length in range(p, p + n_new - 1):
        ids[0, length] = token
        token = _pick(model(ids[:, :length + 1])[0, -1], record)
        out.append(token)
    return prefilled - start, time.perf_counter() - prefilled, out


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", "preset_name", default="demo", show_default=True,
              help="Model preset for a random-init model (test, demo, small, base).")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Benchmark a trained checkpoint directory instead of a random-init preset.")
@click.option("--prompt", "prompt_text", default=None,
              help="Prompt text (with --checkpoint); its token count replaces --prompt-tokens.")
@prompt_options(new_tokens=256)
@common_options(warmup=1, repeats=3)
def main(preset_name, checkpoint, prompt_text, prompt_tokens, new_tokens, seed, warmup, repeats,
         threads, json_path):
    """Decode tokens/s with the KV cache versus recomputing the whole sequence per token."""
    threads = set_threads(threads)
    torch.manual_seed(seed)
    note = ""
    if checkpoint is not None:
        model, tokenizer = load_checkpoint(checkpoint)
        config = model.config
        source = f"checkpoint {checkpoint}"
        if prompt_text is not None:
            prompt_ids = tokenizer.encode(prompt_text)
            if not prompt_ids:
                raise TinyLLMError("--prompt: the text encodes to no tokens")
            prompt_tokens = len(prompt_ids)
        if prompt_tokens + new_tokens > config.max_seq_len:
            raise TinyLLMError(f"prompt {prompt_tokens} + new {new_tokens} tokens exceed the checkpoint's "
                               f"context of {config.max_seq_len}; lower --prompt-tokens or --new-tokens")
    else:
        if prompt_text is not None:
            raise TinyLLMError("--prompt needs --checkpoint (a random-init model has no tokenizer)")
        config = preset(preset_name)
        needed = prompt_tokens + new_tokens
        if needed > config.max_seq_len:
            note = (f"max_seq_len raised {config.max_seq_len} → {needed} so prompt + new tokens fit "
                    "(only the RoPE table grows; no weight changes shape)")
            config = config.replace(max_seq_len=needed)
        model = Transformer(config.validate())
        source = f"{preset_name} preset, random init (seed {seed})"
    model.eval()
    if prompt_text is None:
        prompt_ids = torch.randint(0, config.vocab_size, (prompt_tokens,),
                                   generator=torch.Generator().manual_seed(seed)).tolist()
    prompt = torch.tensor([prompt_ids], dtype=torch.long)

    info = machine_info()
    share = CpuShare()
    strategies = {"cached": decode_cached, "uncached": decode_uncached}
    timings = {name: {"prefill": [], "decode": []} for name in strategies}
    tokens: dict[str, list[list[int]]] = {name: [] for name in strategies}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            label = f"warm-up {r + 1}/{warmup}" if r < warmup else f"repeat {r - warmup + 1}/{repeats}"
            for name, run in strategies.items():
                prefill_s, decode_s, out = run(model, prompt, new_tokens)
                log(f"{label} {name}: prefill {prefill_s * 1e3:.1f} ms, decode {decode_s:.2f} s")
                tokens[name].append(out)
                if r >= warmup:
                    timings[name]["prefill"].append(prefill_s)
                    timings[name]["decode"].append(decode_s)
        share = share.stop()
        # Untimed: the logits themselves, a sharper check than the tokens, since a random-init
        # model's greedy output is often one token repeated. Compared while the tokens agree.
        recorded = {name: [] for name in strategies}
        for name, run in strategies.items():
            run(model, prompt, new_tokens, record=recorded[name])

    # Every run of a strategy must repeat itself, and the two strategies must agree.
    reference = tokens["cached"][0]
    consistent = all(out == reference for runs in tokens.values() for out in runs)
    diff = first_difference(reference, tokens["uncached"][0])
    compared = len(reference) if diff is None else diff + 1
    max_logit_diff = max(float((a - b).abs().max())
                         for a, b in zip(recorded["cached"][:compared], recorded["uncached"][:compared]))
    distinct = len(set(reference))
    steps = new_tokens - 1
    results = {}
    for name in strategies:
        t = timings[name]
        results[name] = {
            "prefill_seconds": summarize(t["prefill"]),
            "prefill_tokens_per_s": rates(prompt_tokens, t["prefill"]),
            "decode_seconds": summarize(t["decode"]),
            "decode_tokens_per_s": rates(steps, t["decode"]),
            "decode_ms_per_token": summarize([1e3 * s / steps for s in t["decode"]]),
        }
    speedup = (results["cached"]["decode_tokens_per_s"]["median"]
               / results["uncached"]["decode_tokens_per_s"]["median"])

    click.echo("tinyllm decode speed: KV cache vs recomputing the whole sequence every token (GuppyLM-style)")
    click.echo(f"machine: {machine_line(info)}")
    for line in share_lines(share, info["cpus_usable"]):
        click.echo(line)
    click.echo(f"model:   {source}, {config.num_params() / 1e6:.2f}M params, "
               f"{config.n_layers} layers, d_model {config.d_model}, vocab {config.vocab_size}")
    if note:
        click.echo(f"         {note}")
    click.echo(f"run:     batch 1, greedy argmax, float32, inference_mode; prompt {prompt_tokens} "
               f"{'text' if prompt_text is not None else 'random'} tokens, {new_tokens} new tokens "
               f"(1 from the prefill + {steps} decode steps, no stop at end-of-text)")
    click.echo(f"timing:  {warmup} warm-up, median (min–max) of {repeats}; cached and uncached alternate")
    click.echo("")
    headers = ["strategy", "prefill tok/s", "decode tok/s", "decode ms/token", "decode s (total)"]
    rows = [[name, spread(r["prefill_tokens_per_s"]), spread(r["decode_tokens_per_s"], "{:,.1f}"),
             spread(r["decode_ms_per_token"], "{:.2f}"), spread(r["decode_seconds"], "{:.2f}")]
            for name, r in results.items()]
    click.echo(table(headers, rows))
    click.echo("")
    click.echo(f"decode speed-up, cached over uncached (median tok/s): {speedup:.1f}×")
    if diff is None and consistent:
        click.echo("tokens identical: yes")
    elif diff is None:
        click.echo("tokens identical: no (cached and uncached agree, but repeats of a strategy differ)")
    else:
        click.echo(f"tokens identical: no (first difference at new token {diff + 1} of {new_tokens})")
    click.echo(f"max |logit difference|, cached vs uncached, over {compared} steps: {max_logit_diff:.2e} "
               f"({distinct} distinct token{'s' if distinct != 1 else ''} among the {new_tokens} generated)")

    write_json(json_path, {
        "benchmark": "decode", "machine": info, "cpu_share": share, "threads": threads,
        "model": {"source": source, "checkpoint": str(checkpoint) if checkpoint else None,
                  "preset": None if checkpoint else preset_name, "note": note or None,
                  "params": config.num_params(), "max_seq_len": config.max_seq_len},
        "settings": {"prompt_tokens": prompt_tokens, "prompt_text": prompt_text, "new_tokens": new_tokens,
                     "decode_steps": steps, "warmup": warmup, "repeats": repeats, "seed": seed,
                     "batch_size": 1, "decoding": "greedy", "dtype": "float32"},
        "results": results, "decode_speedup_cached_over_uncached": speedup,
        "tokens_identical": diff is None and consistent, "first_difference": diff,
        "repeats_consistent": consistent, "max_abs_logit_difference": max_logit_diff,
        "logit_steps_compared": compared, "distinct_tokens_generated": distinct, "tokens_cached": reference,
        "tokens_uncached": tokens["uncached"][0],
    })


if __name__ == "__main__":
    main()
