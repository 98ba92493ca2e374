"""Training: from a data source to a checkpoint directory, resumable step for step.

`tinyllm train` and `python -m tinyllm.train` take the same flags; under `torchrun` (or
`tinyllm train --nproc N`) the same code runs as DistributedDataParallel. The output directory is
itself a loadable checkpoint (latest weights) with the best-by-validation weights in `best/`, the
metrics in `metrics.jsonl` and everything needed to resume in `training_state.safetensors`.
Each step's global batch is a pure function of (seed, step), and each rank takes its slice of
it, so a resumed run, or a run with another number of processes, trains on the same batches.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tinyllm.checkpoint import TOKENIZER_FILE, save_checkpoint, save_weights, write_checkpoint_files
from tinyllm.cli_support import Command
from tinyllm.config import ModelConfig, apply_overrides, preset
from tinyllm.data import BUILTIN_DEFAULT_SIZE
from tinyllm.dataset import DataSpec, batch_offsets, eval_offsets, load_splits, tokenize, windows
from tinyllm.devices import resolve_device
from tinyllm.distributed import Distributed, launch
from tinyllm.errors import TinyLLMError
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer
from tinyllm.train_state import MetricsLog, load_training_state, save_training_state

STATE_FILE = "training_state.safetensors"
METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step (the global batch)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100  # steps between validation (and saves)
    eval_windows: int = 32  # validation windows of max_seq_len tokens
    seed: int = 0
    device: str = "auto"
    compile: bool = False  # torch.compile the training step
    data: DataSpec = field(default_factory=DataSpec)


# Training defaults per model preset; any of them can be overridden on the command line.
PRESET_TRAINING = {
    "test": dict(steps=60, batch_size=8, lr=3e-3, warmup_steps=10, eval_interval=20, eval_windows=8),
    "demo": dict(steps=300, batch_size=16, lr=2e-3, warmup_steps=30, eval_interval=50),
    "small": dict(steps=3000, batch_size=32, lr=1.5e-3, warmup_steps=100, eval_interval=250),
    "base": dict(steps=10000, batch_size=64, lr=1e-3, warmup_steps=300, eval_interval=500),
}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA where supported (fp16 otherwise); plain float32 on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


# -- the run ----------------------------------------------------------------------------------


class LossOfBatch(torch.nn.Module):
    """The model's loss as a module's forward, which is what DDP and torch.compile wrap."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)


class Trainer:
    """One training run writing into `out`; `run()` trains until the configured step count.

    In a multi-process run every rank builds a Trainer; rank 0 alone writes files and logs.
    """

    def __init__(self, model_config: ModelConfig, cfg: TrainConfig, out: str | Path,
                 resume: bool = False, force: bool = False, quiet: bool = False,
                 dist: Distributed | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.dist = dist or Distributed.single()
        self.quiet = quiet or not self.dist.is_main
        self._validate(cfg, model_config, self.dist.world_size)
        self.device = self.dist.device_for(resolve_device(cfg.device))
        self._prepare_output(resume, force)
        self.metrics = MetricsLog(self.out / METRICS_FILE)
        self._log(f"data: {cfg.data.source} (seed {cfg.data.seed})")
        train_docs, val_docs = load_splits(cfg.data)
        self.tokenizer = self._tokenizer(train_docs, model_config.vocab_size, resume)
        self.train_tokens = tokenize(self.tokenizer, train_docs)
        self.val_tokens = tokenize(self.tokenizer, val_docs)
        seq = model_config.max_seq_len
        if len(self.train_tokens) <= seq + 1 or len(self.val_tokens) <= seq + 1:
            raise TinyLLMError(f"data {cfg.data.source}: {len(self.train_tokens)} training and "
                               f"{len(self.val_tokens)} validation tokens, too few for windows of {seq}; "
                               "add text or lower max_seq_len (--set max_seq_len=N)")
        eot = self.tokenizer.eot_id
        self.model_config = model_config.replace(
            vocab_size=self.tokenizer.vocab_size, bos_token_id=eot, eos_token_id=eot,
            extra={**model_config.extra, "data": cfg.data.to_dict()}).validate()
        torch.manual_seed(cfg.seed)  # every rank starts from the same weights
        self.model = Transformer(self.model_config).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.autocast, self.scaler = autocast_context(self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.step, self.best_val = 0, float("inf")
        if resume:
            header = load_training_state(self.out / STATE_FILE, self.model, self.optimizer)
            self.step, self.best_val = header["step"], header["best_val_loss"]
            if self.dist.is_main:
                self.metrics.truncate_after(self.step)
            self._log(f"resuming from step {self.step}")
        elif self.dist.is_main:
            write_checkpoint_files(self.out, self.model, self.tokenizer)
        self.loss_fn: torch.nn.Module = LossOfBatch(self.model)
        if self.dist.enabled:
            self.loss_fn = DistributedDataParallel(
                self.loss_fn, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.loss_fn = torch.compile(self.loss_fn)
        self.stop_requested = False
        self.dist.barrier()

    @staticmethod
    def _validate(cfg: TrainConfig, model_config: ModelConfig, world_size: int) -> None:
        model_config.validate()
        for name in ("steps", "batch_size", "grad_accum", "eval_interval", "eval_windows"):
            if getattr(cfg, name) <= 0:
                raise TinyLLMError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
        if cfg.batch_size % (cfg.grad_accum * world_size):
            raise TinyLLMError(f"--batch-size {cfg.batch_size} is not a multiple of --grad-accum {cfg.grad_accum}"
                               + (f" x {world_size} processes" if world_size > 1 else ""))
        if not cfg.lr > 0:
            raise TinyLLMError(f"--lr must be positive, got {cfg.lr}")

    def _prepare_output(self, resume: bool, force: bool) -> None:
        if resume:
            if not (self.out / STATE_FILE).is_file():
                raise TinyLLMError(f"{self.out}: nothing to resume (no {STATE_FILE}); drop --resume to start a run")
            return
        exists = self.out.exists() and any(self.out.iterdir())
        if exists and not force:
            raise TinyLLMError(f"{self.out}: already exists; pass --resume to continue that run "
                               "or --force to start over (its contents are deleted)")
        self.dist.barrier()  # every rank has looked before rank 0 clears the directory
        if self.dist.is_main:
            if exists:
                shutil.rmtree(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()

    def _tokenizer(self, train_docs: list[str], vocab_size: int, resume: bool) -> Tokenizer:
        """Rank 0 trains the tokenizer and stores it; the other ranks read it from there."""
        if not resume and self.dist.is_main:
            self._log(f"training a {vocab_size}-token byte-level BPE tokenizer")
            Tokenizer.train(train_docs, vocab_size).save(self.out / TOKENIZER_FILE)
        self.dist.barrier()
        return Tokenizer.load(self.out / TOKENIZER_FILE)

    def _log(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss over fixed validation windows, shared out across ranks."""
        self.model.eval()
        seq = self.model_config.max_seq_len
        offsets = eval_offsets(len(self.val_tokens), seq, self.cfg.eval_windows)
        mine = offsets[self.dist.rank::self.dist.world_size]
        total = 0.0
        for chunk in np.array_split(mine, max(1, -(-len(mine) // self.cfg.batch_size))):
            if len(chunk):
                x, y = windows(self.val_tokens, chunk, seq, self.device)
                with self.autocast:
                    total += self.model.loss(x, y).item() * len(chunk)
        self.model.train()
        return self.dist.mean(total, self.device) * self.dist.world_size / len(offsets)

    def train_step(self) -> float:
        """One optimizer step over the global batch of `self.step`; returns its mean loss."""
        cfg, seq, dist = self.cfg, self.model_config.max_seq_len, self.dist
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        offsets = batch_offsets(len(self.train_tokens), seq, cfg.batch_size, cfg.seed, self.step)
        mine = np.split(offsets, dist.world_size)[dist.rank]
        total = 0.0
        micro_batches = np.split(mine, cfg.grad_accum)
        for i, micro in enumerate(micro_batches):
            x, y = windows(self.train_tokens, micro, seq, self.device)
            # Gradients are all-reduced once per step, on the last micro-batch only.
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not dist.enabled else self.loss_fn.no_sync()
            with sync:
                with self.autocast:
                    loss = self.loss_fn(x, y) / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return dist.mean(total, self.device)

    def save(self) -> None:
        if not self.dist.is_main:
            return
        save_weights(self.out / "model.safetensors", self.model, {"step": str(self.step)})
        header = {"step": self.step, "best_val_loss": self.best_val, "world_size": self.dist.world_size,
                  "train_config": asdict(self.cfg)}
        save_training_state(self.out / STATE_FILE, self.model, self.optimizer, header)

    def evaluate_and_save(self) -> float:
        val = self.validation_loss()
        if val < self.best_val:
            self.best_val = val
            if self.dist.is_main:
                save_checkpoint(self.out / BEST_DIR, self.model, self.tokenizer, replace=True)
        self.record(step=self.step, val_loss=val, val_ppl=math.exp(val), best_val_loss=self.best_val)
        self.save()
        return val

    def record(self, **metrics) -> None:
        if self.dist.is_main:
            self.metrics.write(**metrics)

    def run(self, stop_at: int | None = None) -> dict:
        """Train to the configured step count, or stop early at `stop_at` (as an interrupt does),
        leaving a resumable checkpoint either way. Returns the last metrics."""
        cfg = self.cfg
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        self.model.train()
        tokens_per_step = cfg.batch_size * self.model_config.max_seq_len
        self._log(f"model: {self.model_config.num_params():,} parameters, "
                  f"{self.model_config.extra.get('preset', 'custom')} preset, on {self.device}"
                  + (f", {self.dist.world_size} processes" if self.dist.enabled else ""))
        previous = signal.signal(signal.SIGINT, self._request_stop)
        last: dict = {}
        try:
            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step",
                       disable=self.quiet, file=sys.stderr, dynamic_ncols=True)
            while self.step < end and not self.dist.any(self.stop_requested, self.device):
                started = time.perf_counter()
                loss = self.train_step()
                rate = tokens_per_step / (time.perf_counter() - started)
                last = dict(step=self.step, loss=loss, lr=lr_at(self.step - 1, cfg), tokens_per_s=rate)
                self.record(**last)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{last['lr']:.2e}", tok_s=f"{rate:,.0f}")
                bar.update(1)
                if self.step % cfg.eval_interval == 0 or self.step == cfg.steps:
                    last["val_loss"] = self.evaluate_and_save()
                    self._log(f"step {self.step}: val loss {last['val_loss']:.4f}, "
                              f"val ppl {math.exp(last['val_loss']):.2f}")
            bar.close()
        finally:
            signal.signal(signal.SIGINT, previous)
        if self.step < cfg.steps:
            self.save()
            self._log(f"stopped at step {self.step} of {cfg.steps}; continue with --resume")
        self.dist.barrier()
        return last

    def _request_stop(self, signum, frame) -> None:
        self._log("interrupt: finishing this step, saving, then stopping (Ctrl-C again to abort)")
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)


def train_config_for(preset_name: str, **overrides) -> TrainConfig:
    """The preset's training defaults with `overrides` (None values ignored) applied."""
    values = dict(PRESET_TRAINING.get(preset_name, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def _override_option(name: str, kind, help_text: str):
    return click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None, help=help_text)


@click.command("train", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", "preset_name", default="demo", show_default=True, help="Model preset: test, demo, small, base.")
@click.option("--data", "data_source", default="builtin", show_default=True,
              help="'builtin' (the synthetic corpus) or a .txt file, a directory of them, or a .jsonl file.")
@click.option("--corpus-size", type=int, default=BUILTIN_DEFAULT_SIZE, show_default=True,
              help="Characters of built-in corpus to generate.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory; it becomes a loadable checkpoint.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last save.")
@click.option("--force", is_flag=True, help="Delete an existing --out and start over.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data, init and batches.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@_override_option("steps", int, "Optimizer steps [preset default].")
@_override_option("batch_size", int, "Sequences per optimizer step [preset default].")
@_override_option("grad_accum", int, "Micro-batches per step (gradient accumulation).")
@_override_option("lr", float, "Peak learning rate.")
@_override_option("warmup_steps", int, "Linear warmup steps.")
@_override_option("eval_interval", int, "Steps between validation and saves.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a model config field, e.g. --set n_layers=6 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar or messages.")
@click.option("--nproc", type=int, default=None,
              help="Train with N processes (DistributedDataParallel via torchrun: gloo on CPU, nccl on GPUs).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the training step (best on CUDA).")
@click.pass_context
def train_command(ctx, preset_name, data_source, corpus_size, out, resume, force, seed, device, overrides, quiet,
                  nproc, compile_model, **train_overrides):
    """Train a model from scratch (or --resume one) into OUT.

    Runs unchanged under `torchrun --nproc-per-node N -m tinyllm.train ...`; `--nproc N` starts that for you.
    """
    if nproc is not None and "WORLD_SIZE" not in os.environ:
        sys.exit(launch(nproc, _arguments_without(ctx, "nproc")))
    if resume and force:
        raise TinyLLMError("--resume and --force contradict each other; pick one")
    model_config = apply_overrides(preset(preset_name), list(overrides))
    spec = DataSpec(source=data_source, size=corpus_size, seed=seed)
    cfg = train_config_for(preset_name, seed=seed, device=device, data=spec, compile=compile_model,
                           **train_overrides)
    dist = Distributed.from_environment(resolve_device(device))
    try:
        trainer = Trainer(model_config, cfg, out, resume=resume, force=force, quiet=quiet, dist=dist)
        trainer.run()
    finally:
        dist.close()
    if not dist.is_main:
        return
    if trainer.step >= cfg.steps:
        from tinyllm.evaluate import evaluate_checkpoint, format_report

        report = evaluate_checkpoint(out)
        click.echo(format_report(report))
        trainer.record(step=trainer.step, event="final", **report)
    click.echo(f"checkpoint: {out} (best by validation: {out / BEST_DIR})")


def _arguments_without(ctx: click.Context, skip: str) -> list[str]:
    """The command line this command was given, rebuilt from its parsed parameters, minus one."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == skip or value is None or value is False or value == ():
            continue
        flag = param.opts[0]
        if getattr(param, "is_flag", False):
            args.append(flag)
        else:
            for item in value if getattr(param, "multiple", False) else (value,):
                args += [flag, str(item)]
    return args


if __name__ == "__main__":
    train_command()
