"""Training throughput and model FLOPs utilisation (MFU) of tinyllm presets on this machine.

For each preset, a randomly initialised `Transformer` is trained on one fixed batch of random
token ids (batch `--batch-size` × the preset's `max_seq_len`, or `--seq-len`); random ids cost
exactly what real text costs. A timed step is what `Trainer.train_step` does with one micro-batch:
forward, cross-entropy loss, backward, gradient clipping (unless `--no-grad-clip`), the AdamW step
of `tinyllm.train.make_optimizer` and `zero_grad`. `--warmup` untimed steps come first, then
`--repeats` timed ones; the table shows medians and the min–max spread.

Model FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B), forward plus backward:

    6·N + 12·n_layers·seq_len·d_model

with N = every matmul weight the tokens pass through: the attention and MLP projections of every
layer plus the lm_head (counted even when it is tied to the embedding, since the logits are a real
matmul), but not the embedding lookup (a gather) nor the norm gains. The second term is attention's
QKᵀ and AV over the full seq_len×seq_len square (causal masking is not discounted, as in PaLM).

MFU = achieved FLOP/s ÷ peak FLOP/s, where the peak is measured in the same run by timing a large
float32 `torch.matmul` (2·n³ FLOPs for n×n @ n×n) with the same thread count, once before and
once after the presets; the higher of the two medians is the peak, since on a shared machine a
neighbour can only make it look lower. That is a practical peak for this CPU and BLAS, not the
datasheet figure, so MFU here reads "fraction of what the best dense kernel reaches". Progress
goes to stderr; the table to stdout. Timings are never asserted.

    .venv/bin/python tools/bench_train.py --presets demo,small --json runs/bench_train.json
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import click
import torch
import torch.nn as nn

# Run as a script from a checkout, installed or not: the sibling helper and the tinyllm package
# next to tools/ must import however it is launched.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from bench_common import (  # noqa: E402
    CpuShare, common_options, machine_info, machine_line, share_lines, rates, set_threads, spread,
    summarize, table, timed, write_json)
from tinyllm.cli_support import Command  # noqa: E402
from tinyllm.config import ModelConfig, preset  # noqa: E402
from tinyllm.errors import TinyLLMError  # noqa: E402
from tinyllm.model import Transformer  # noqa: E402
from tinyllm.train import make_optimizer, train_config_for  # noqa: E402


def log(message: str) -> None:
    click.echo(message, err=True)


def matmul_params(model: Transformer) -> int:
    """N: weights of every nn.Linear, lm_head included even when tied (it is still a matmul)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def flops_per_token(config: ModelConfig, n_matmul: int, seq_len: int) -> dict:
    dense = 6 * n_matmul
    attention = 12 * config.n_layers * seq_len * config.n_heads * config.head_dim
    return {"dense_6N": dense, "attention": attention, "total": dense + attention}


def measure_peak(n: int, warmup: int, repeats: int) -> dict:
    """FLOP/s of one float32 n×n @ n×n matmul, the best case the training step is measured against."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    seconds = [timed(lambda: torch.matmul(a, b, out=out))[0] for _ in range(repeats)]
    return {"n": n, "flops_per_matmul": 2 * n ** 3, "seconds": summarize(seconds),
            "flops_per_s": rates(2 * n ** 3, seconds)}


def bench_preset(name: str, batch_size: int, seq_len: int | None, warmup: int, repeats: int,
                 grad_clip: bool, seed: int) -> dict:
    config = preset(name)
    if seq_len is not None:
        # The RoPE tables are sized by max_seq_len, so a longer sequence needs a longer context.
        config = config.replace(max_seq_len=seq_len)
    config.validate()
    seq = config.max_seq_len
    train_cfg = train_config_for(name, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)
    model = Transformer(config)
    model.train()
    optimizer = make_optimizer(model, train_cfg)
    # One fixed batch: the step's cost does not depend on which ids it sees.
    data = torch.randint(0, config.vocab_size, (batch_size, seq + 1),
                         generator=torch.Generator().manual_seed(seed))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step() -> float:
        loss = model.loss(x, y)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for i in range(warmup):
        t, loss = timed(step)
        log(f"  {name}: warm-up step {i + 1}/{warmup}: {t:.2f} s (loss {loss:.3f})")
    seconds = []
    for i in range(repeats):
        t, loss = timed(step)
        seconds.append(t)
        log(f"  {name}: step {i + 1}/{repeats}: {t:.2f} s (loss {loss:.3f})")

    tokens = batch_size * seq
    n_matmul = matmul_params(model)
    fpt = flops_per_token(config, n_matmul, seq)
    result = {
        "preset": name, "batch_size": batch_size, "seq_len": seq, "tokens_per_step": tokens,
        "params_total": config.num_params(), "params_matmul_N": n_matmul,
        "params_embedding": config.vocab_size * config.d_model,
        "tied_embeddings": config.tie_embeddings,
        "flops_per_token": fpt, "flops_per_step": fpt["total"] * tokens,
        "grad_clip": grad_clip,
        "step_seconds": summarize(seconds),
        "tokens_per_s": rates(tokens, seconds),
        "flops_per_s": rates(fpt["total"] * tokens, seconds),
    }
    del model, optimizer
    gc.collect()
    return result


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--presets", default="demo,small", show_default=True,
              help="Comma-separated model presets (test, demo, small, base).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Sequences per training step.")
@click.option("--seq-len", type=click.IntRange(min=2), default=None,
              help="Tokens per sequence [each preset's max_seq_len].")
@click.option("--grad-clip/--no-grad-clip", default=True, show_default=True,
              help="Clip the gradient norm in each step, as `tinyllm train` does.")
@click.option("--peak-size", type=click.IntRange(min=64), default=2048, show_default=True,
              help="n of the n×n float32 matmul timed as the peak for MFU.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init and the random batch.")
@common_options(warmup=2, repeats=5)
def main(presets, batch_size, seq_len, grad_clip, peak_size, seed, warmup, repeats, threads, json_path):
    """Time full training steps per preset and report tokens/s, GFLOP/s and MFU."""
    names = [p.strip() for p in presets.split(",") if p.strip()]
    if not names:
        raise TinyLLMError("--presets: name at least one preset")
    for name in names:
        preset(name)  # fail on a typo before spending minutes on the presets before it
    threads = set_threads(threads)
    info = machine_info()
    share = CpuShare()

    log(f"peak: timing a {peak_size}×{peak_size} float32 matmul")
    peak_before = measure_peak(peak_size, warmup, repeats)
    results = []
    for name in names:
        log(f"{name}: {warmup} warm-up + {repeats} timed training steps")
        results.append(bench_preset(name, batch_size, seq_len, warmup, repeats, grad_clip, seed))
    log(f"peak: timing the {peak_size}×{peak_size} matmul again")
    peak_after = measure_peak(peak_size, warmup, repeats)
    share = share.stop()
    peak = max(peak_before, peak_after, key=lambda p: p["flops_per_s"]["median"])
    for r in results:
        r["mfu"] = {k: r["flops_per_s"][k] / peak["flops_per_s"]["median"] for k in ("median", "min", "max")}

    def gflops(stats: dict) -> dict:
        return {k: stats[k] / 1e9 for k in ("median", "min", "max")}

    click.echo("tinyllm training throughput (random-init model, random token batches)")
    click.echo(f"machine: {machine_line(info)}")
    for line in share_lines(share, info["cpus_usable"]):
        click.echo(line)
    click.echo(f"step:    forward + loss + backward{' + grad clip' if grad_clip else ''} + AdamW + zero_grad; "
               f"{warmup} warm-up, median (min–max) of {repeats}")
    click.echo(f"peak:    float32 matmul {peak_size}×{peak_size} @ {peak_size}×{peak_size} (2·n³ FLOPs), "
               f"{threads} threads: {spread(gflops(peak_before['flops_per_s']), '{:,.1f}')} GFLOP/s before, "
               f"{spread(gflops(peak_after['flops_per_s']), '{:,.1f}')} after; MFU uses the higher median")
    click.echo("FLOPs:   per token = 6·N + 12·n_layers·seq_len·d_model (PaLM app. B, fwd+bwd); "
               "N = all matmul weights incl. lm_head, excl. embedding lookup and norms")
    click.echo("")
    headers = ["preset", "params", "N (matmul)", "batch×seq", "step s", "tokens/s", "MFLOP/token",
               "GFLOP/s", "MFU"]
    rows = []
    for r in results:
        rows.append([r["preset"], f"{r['params_total'] / 1e6:.2f}M", f"{r['params_matmul_N'] / 1e6:.2f}M",
                     f"{r['batch_size']}×{r['seq_len']}", spread(r["step_seconds"], "{:.3f}"),
                     spread(r["tokens_per_s"]), f"{r['flops_per_token']['total'] / 1e6:.1f}",
                     spread(gflops(r["flops_per_s"]), "{:.1f}"), f"{100 * r['mfu']['median']:.1f}%"])
    click.echo(table(headers, rows))
    click.echo("\nparams = all parameters (tied embedding once); MFLOP/token includes attention; "
               "MFU = median GFLOP/s ÷ peak.")

    write_json(json_path, {
        "benchmark": "train", "machine": info, "cpu_share": share, "threads": threads,
        "settings": {"presets": names, "batch_size": batch_size, "seq_len_override": seq_len,
                     "warmup": warmup, "repeats": repeats, "grad_clip": grad_clip, "seed": seed},
        "flops_convention": "6*N + 12*n_layers*seq_len*d_model per token (PaLM appendix B, fwd+bwd); "
                            "N = all nn.Linear weights incl. lm_head, excl. embedding lookup and norms",
        "peak": peak, "peak_before": peak_before, "peak_after": peak_after, "results": results,
    })


if __name__ == "__main__":
    main()
