"""Training: from a data source to a checkpoint directory, resumable step for step.

`tinyllm train` and `python -m tinyllm.train` take the same flags; under `torchrun` (or
`tinyllm train --nproc N`) the same code runs as DistributedDataParallel. The output directory is
itself a loadable checkpoint (latest weights) with the best-by-validation weights in `best/`, the
metrics in `metrics.jsonl` and everything needed to resume in `training_state.safetensors`
(`--resume` alone restores the run's model and training configuration from there). A start that
fails before the first save removes the output directory it created.
Each step's global batch is a pure function of (seed, step), and each rank takes its slice of
it, so a resumed run, or a run with another number of processes, trains on the same batches. The
loss of a step is the mean over its target tokens (chat documents: the assistant's replies), the
same however the batch is cut into micro-batches and processes.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tinyllm.checkpoint import CONFIG_FILE, TOKENIZER_FILE, save_checkpoint, save_weights, write_checkpoint_files
from tinyllm.config import ModelConfig
from tinyllm.dataset import (IGNORE_INDEX, TRAIN_ON, DataSpec, batch_offsets, eval_offsets, load_splits,
                             tokenize_for_training, windows)
from tinyllm.devices import resolve_device
from tinyllm.distributed import Distributed
from tinyllm.errors import TinyLLMError
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer
from tinyllm.train_state import MetricsLog, load_training_state, save_training_state

STATE_FILE = "training_state.safetensors"
METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"
# What makes two models the same shape: a run resumes only into the model it saved.
MODEL_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len",
                "rope_theta", "norm_eps", "tie_embeddings")


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
    train_on: str = "assistant"  # chat documents: "assistant" (replies only) or "all" tokens
    data: DataSpec = field(default_factory=DataSpec)


# Training defaults per model preset; any of them can be overridden on the command line.
PRESET_TRAINING = {
    "test": dict(steps=60, batch_size=8, lr=3e-3, warmup_steps=10, eval_interval=20, eval_windows=8),
    # Batches of 8 for twice the steps, in the time 300 batches of 16 took: more updates learn the
    # world's facts faster (the recipe and its figures: docs/training.md).
    "demo": dict(steps=600, batch_size=8, lr=3e-3, warmup_steps=60, eval_interval=100),
    "small": dict(steps=3000, batch_size=32, lr=1.5e-3, warmup_steps=100, eval_interval=250),
    "base": dict(steps=10000, batch_size=64, lr=1e-3, warmup_steps=300, eval_interval=500),
}


# The built-in corpus's mix per preset, where it differs from the corpus's own default.
PRESET_DATA: dict[str, dict] = {"demo": dict(qa_fraction=0.6)}


def data_spec_for(preset_name: str, **overrides) -> DataSpec:
    """The data a preset trains on by default, with `overrides` (None values ignored) applied."""
    values = dict(PRESET_DATA.get(preset_name, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DataSpec(**values)


def training_state_path(out: Path) -> Path:
    """The training state a run in `out` resumes from, or one clear line saying there is none."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        raise TinyLLMError(f"{out}: nothing to resume (no {STATE_FILE}); drop --resume to start a run")
    return path


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


def summed_loss(model: Transformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the targets of y that are not IGNORE_INDEX."""
    logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


class LossOfBatch(torch.nn.Module):
    """The model's summed loss as a module's forward, which is what DDP and torch.compile wrap."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return summed_loss(self.model, x, y)


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
        self._check_output(resume, force)
        self._log(f"data: {cfg.data.source} (seed {cfg.data.seed})")
        train_docs, val_docs = load_splits(cfg.data)  # bad data fails here, before anything is written
        self.resumed = resume
        self.created_out = self._prepare_output(resume, force)
        try:
            self._build(model_config, train_docs, val_docs, resume)
        except BaseException:
            self._discard_unsaved()
            raise

    def _build(self, model_config: ModelConfig, train_docs: list[str], val_docs: list[str], resume: bool) -> None:
        cfg = self.cfg
        self.metrics = MetricsLog(self.out / METRICS_FILE)
        self.tokenizer = self._tokenizer(train_docs, model_config.vocab_size, resume)
        self.train_tokens, self.train_targets = tokenize_for_training(self.tokenizer, train_docs, cfg.train_on)
        self.val_tokens, self.val_targets = tokenize_for_training(self.tokenizer, val_docs, cfg.train_on)
        # Targets among the tokens before each position: a window's target count in O(1).
        self.train_targets_before = np.concatenate([[0], np.cumsum(self.train_targets)])
        seq = model_config.max_seq_len
        if len(self.train_tokens) <= seq + 1 or len(self.val_tokens) <= seq + 1:
            raise TinyLLMError(f"data {cfg.data.source}: {len(self.train_tokens)} training and "
                               f"{len(self.val_tokens)} validation tokens, too few for windows of {seq}; "
                               "add text or lower max_seq_len (--set max_seq_len=N)")
        if not self.train_targets.any() or not self.val_targets.any():
            raise TinyLLMError(f"data {cfg.data.source}: no tokens to learn from in the training or validation "
                               "split (its chats have no assistant replies); add some or pass --train-on all")
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
            self._check_resumable_model(model_config)
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
        if cfg.train_on not in TRAIN_ON:
            raise TinyLLMError(f"--train-on {cfg.train_on!r}: choose one of {', '.join(TRAIN_ON)}")
        if not 0 <= cfg.data.qa_fraction <= 1:
            raise TinyLLMError(f"--qa-fraction {cfg.data.qa_fraction}: must be between 0 and 1")

    def _check_output(self, resume: bool, force: bool) -> None:
        if resume:
            training_state_path(self.out)
        elif self.out.exists() and any(self.out.iterdir()) and not force:
            raise TinyLLMError(f"{self.out}: already exists; pass --resume to continue that run "
                               "or --force to start over (its contents are deleted)")

    def _prepare_output(self, resume: bool, force: bool) -> bool:
        """Make (or with `force`, empty) the output directory; True when this run created it."""
        if resume:
            return False
        existed = self.out.exists()
        self.dist.barrier()  # every rank has looked before rank 0 clears the directory
        if self.dist.is_main:
            if existed and any(self.out.iterdir()):
                shutil.rmtree(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        return not existed

    def _discard_unsaved(self) -> None:
        """After a failure before the first save, remove the output directory this run created, or
        empty the one it found empty (or emptied, with --force): what is in it now is this run's."""
        if not self.dist.is_main or self.resumed or (self.out / STATE_FILE).exists():
            return
        if self.created_out:
            shutil.rmtree(self.out, ignore_errors=True)
            return
        for child in self.out.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def _check_resumable_model(self, model_config: ModelConfig) -> None:
        stored = ModelConfig.load(self.out / CONFIG_FILE)
        differ = [f"{name} {getattr(self.model_config, name)} (the run has {getattr(stored, name)})"
                  for name in MODEL_FIELDS if getattr(self.model_config, name) != getattr(stored, name)]
        if differ:
            raise TinyLLMError(f"{self.out}: cannot resume with another model: {', '.join(differ)}; "
                               "resume with the run's own configuration (tinyllm train --out DIR --resume)")

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
        total, count = 0.0, 0
        for chunk in np.array_split(mine, max(1, -(-len(mine) // self.cfg.batch_size))):
            if len(chunk):
                x, y = windows(self.val_tokens, chunk, seq, self.device, self.val_targets)
                with self.autocast:
                    total += summed_loss(self.model, x, y).item()
                count += int((y != IGNORE_INDEX).sum())
        self.model.train()
        # Means over ranks times the world size: sums over every rank's windows.
        return self.dist.mean(total, self.device) / max(1e-9, self.dist.mean(count, self.device))

    def train_step(self) -> float:
        """One optimizer step over the global batch of `self.step`; returns its mean loss."""
        cfg, seq, dist = self.cfg, self.model_config.max_seq_len, self.dist
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        offsets = batch_offsets(len(self.train_tokens), seq, cfg.batch_size, cfg.seed, self.step)
        # Every rank counts the targets of the whole global batch, so that summed losses divided by
        # it (times the world size, which DDP's gradient averaging divides out) make the step's mean.
        before = self.train_targets_before
        n_targets = int((before[offsets + seq + 1] - before[offsets + 1]).sum())
        scale = dist.world_size / max(1, n_targets)
        mine = np.split(offsets, dist.world_size)[dist.rank]
        total = 0.0
        micro_batches = np.split(mine, cfg.grad_accum)
        for i, micro in enumerate(micro_batches):
            x, y = windows(self.train_tokens, micro, seq, self.device, self.train_targets)
            # Gradients are all-reduced once per step, on the last micro-batch only.
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not dist.enabled else self.loss_fn.no_sync()
            with sync:
                with self.autocast:
                    loss = self.loss_fn(x, y) * scale
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
            last = self._train_until(end, tokens_per_step)
        except BaseException:
            self._discard_unsaved()
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        if self.step < cfg.steps:
            self.save()
            self._log(f"stopped at step {self.step} of {cfg.steps}; continue with --resume")
        self.dist.barrier()
        return last

    def _train_until(self, end: int, tokens_per_step: int) -> dict:
        cfg, last = self.cfg, {}
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


def train_config_from_dict(stored: dict) -> TrainConfig:
    """A TrainConfig from its `asdict` form (as the training state stores it); unknown keys are ignored."""
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in stored.items() if k in known and k != "data"}
    return TrainConfig(**values, data=DataSpec.from_dict(stored.get("data", {})))


if __name__ == "__main__":
    from tinyllm.train_cli import train_command

    train_command()
