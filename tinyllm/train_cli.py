"""`tinyllm train`: training's command line, and how `--resume` reconciles it with the stored run.

A new run takes the preset's training defaults with the flags given on top. `--resume` takes the
whole run from its directory (the model from config.json, the training configuration from the
training state) and accepts only flags that agree with it: --steps may grow, and the flags about
this process rather than the run (--device, --compile, --quiet, --nproc, --facts) are free; any
other flag that differs is refused with what differs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from tinyllm.checkpoint import CONFIG_FILE
from tinyllm.cli_support import Command
from tinyllm.config import ModelConfig, apply_overrides, preset
from tinyllm.data import BUILTIN_DEFAULT_SIZE, BUILTIN_QA_FRACTION
from tinyllm.dataset import TRAIN_ON, DataSpec
from tinyllm.devices import resolve_device
from tinyllm.distributed import Distributed, launch
from tinyllm.errors import TinyLLMError
from tinyllm.train import (BEST_DIR, TrainConfig, Trainer, data_spec_for, train_config_for,
                           train_config_from_dict, training_state_path)
from tinyllm.train_state import read_training_header

# Flags that define the run, with the stored value each must agree with on --resume.
_RUN_FLAGS = {
    "preset_name": ("--preset", lambda model, cfg: model.extra.get("preset")),
    "data_source": ("--data", lambda model, cfg: cfg.data.source),
    "corpus_size": ("--corpus-size", lambda model, cfg: cfg.data.size),
    "qa_fraction": ("--qa-fraction", lambda model, cfg: cfg.data.qa_fraction),
    "val_fraction": ("--val-fraction", lambda model, cfg: cfg.data.val_fraction),
    "seed": ("--seed", lambda model, cfg: cfg.seed),
    "train_on": ("--train-on", lambda model, cfg: cfg.train_on),
    **{name: (f"--{name.replace('_', '-')}", lambda model, cfg, name=name: getattr(cfg, name))
       for name in ("batch_size", "grad_accum", "lr", "warmup_steps", "eval_interval")},
}


def _given(ctx: click.Context) -> dict:
    """The parameters the user set (on the command line or through the environment)."""
    return {name: value for name, value in ctx.params.items()
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)}


def resumed_run(out: Path, given: dict) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configuration stored in `out`, with the flags given on top of them
    where they may differ (more --steps, --device, --compile); any other difference is an error."""
    header = read_training_header(training_state_path(out))
    model_config = ModelConfig.load(out / CONFIG_FILE)
    cfg = train_config_from_dict(header.get("train_config", {}))
    differ = []
    for name, (flag, stored_value) in _RUN_FLAGS.items():
        if name in given and given[name] != stored_value(model_config, cfg):
            differ.append(f"{flag} {given[name]} (the run has {stored_value(model_config, cfg)})")
    for item in given.get("overrides", ()):
        field = item.partition("=")[0]
        wanted = getattr(apply_overrides(model_config, [item]), field)
        if wanted != getattr(model_config, field):
            differ.append(f"--set {item} (the run has {field}={getattr(model_config, field)})")
    steps = given.get("steps", cfg.steps)
    if steps < cfg.steps:
        differ.append(f"--steps {steps} (the run has {cfg.steps}; only more steps may be given)")
    if differ:
        raise TinyLLMError(f"{out}: --resume continues the run as it was saved, and these flags differ from it: "
                           f"{'; '.join(differ)}; drop them (or start a new run with --force)")
    changes = {"steps": steps, "compile": given.get("compile_model", cfg.compile)}
    if "device" in given:
        changes["device"] = given["device"]
    return model_config, dataclasses.replace(cfg, **changes)


def _override_option(name: str, kind, help_text: str):
    return click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None, help=help_text)


@click.command("train", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", "preset_name", default="demo", show_default=True, help="Model preset: test, demo, small, base.")
@click.option("--data", "data_source", default="builtin", show_default=True,
              help="'builtin' (the synthetic corpus), a .txt or .jsonl file or a directory of them, or a Hugging "
                   "Face dataset: a save_to_disk directory, a .parquet or .arrow file, hf:NAME[:SPLIT].")
@click.option("--corpus-size", type=int, default=BUILTIN_DEFAULT_SIZE, show_default=True,
              help="Characters of built-in corpus to generate.")
@click.option("--qa-fraction", type=float, default=None,
              help="Share of the built-in corpus (by characters) in question-answer chats on its world's facts "
                   f"[preset default; else {BUILTIN_QA_FRACTION}].")
@click.option("--val-fraction", type=float, default=DataSpec.val_fraction, show_default=True,
              help="Share held out for validation: of the documents, or of the text when it is one document.")
@click.option("--train-on", type=click.Choice(TRAIN_ON), default=TrainConfig.train_on, show_default=True,
              help="In chat documents, learn the assistant's replies only, or every token.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory; it becomes a loadable checkpoint.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last save, with its own settings (more --steps allowed).")
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
@click.option("--facts/--no-facts", default=True, show_default=True,
              help="End with the world-fact accuracy beside perplexity (built-in data only).")
@click.pass_context
def train_command(ctx, preset_name, data_source, corpus_size, qa_fraction, val_fraction, train_on, out, resume,
                  force, seed, device, overrides, quiet, nproc, compile_model, facts, **train_overrides):
    """Train a model from scratch (or --resume one) into OUT.

    Runs unchanged under `torchrun --nproc-per-node N -m tinyllm.train ...`; `--nproc N` starts that for you.
    """
    if nproc is not None and "WORLD_SIZE" not in os.environ:
        sys.exit(launch(nproc, _arguments_without(ctx, "nproc")))
    if resume and force:
        raise TinyLLMError("--resume and --force contradict each other; pick one")
    if resume:
        model_config, cfg = resumed_run(out, _given(ctx))
    else:
        model_config = apply_overrides(preset(preset_name), list(overrides))
        spec = data_spec_for(preset_name, source=data_source, size=corpus_size, seed=seed,
                             val_fraction=val_fraction, qa_fraction=qa_fraction)
        cfg = train_config_for(preset_name, seed=seed, device=device, data=spec, compile=compile_model,
                               train_on=train_on, **train_overrides)
    dist = Distributed.from_environment(resolve_device(cfg.device))
    try:
        trainer = Trainer(model_config, cfg, out, resume=resume, force=force, quiet=quiet, dist=dist)
        trainer.run()
    finally:
        dist.close()
    if not dist.is_main:
        return
    if trainer.step >= cfg.steps:
        from tinyllm.evaluate import evaluate_checkpoint, format_report

        report = evaluate_checkpoint(out, facts=facts)
        click.echo(format_report(report))
        trainer.record(step=trainer.step, event="final", **report)
    click.echo(f"checkpoint: {out} (best by validation: {out / BEST_DIR})")


def _arguments_without(ctx: click.Context, skip: str) -> list[str]:
    """The flags this command was given (defaults left out, so that a resumed run's child processes
    see what the user said), rebuilt from its parsed parameters, minus one."""
    args: list[str] = []
    given = _given(ctx)
    for param in ctx.command.params:
        value = given.get(param.name)
        if param.name == skip or value is None or value is False or value == ():
            continue
        flag = param.opts[0]
        if getattr(param, "is_flag", False):
            args.append(flag)
        else:
            for item in value if getattr(param, "multiple", False) else (value,):
                args += [flag, str(item)]
    return args
