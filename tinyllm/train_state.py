"""What a training run leaves behind to be resumed: weights, AdamW state and a JSON header, in one
safetensors file (no pickles), plus the JSONL metrics log.

One file, written atomically, so a resume always reads weights and optimizer moments of the same
step. The state holds full (unsharded) tensors, so a run may resume with a different number of
processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tinyllm.checkpoint import read_tensors
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_write, atomic_write_text
from tinyllm.model import Transformer


def save_training_state(path: Path, model: Transformer, optimizer: torch.optim.Optimizer, header: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and model.config.tie_embeddings)}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    header = {**header, "param_groups": opt["param_groups"]}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"tinyllm": json.dumps(header)}))


def read_training_header(path: Path) -> dict:
    """The JSON header of a training state (step, best validation loss, the training config)."""
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["tinyllm"])
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
        raise TinyLLMError(f"{path}: not a tinyllm training state ({e}); it is damaged, start over with --force") \
            from None


def load_training_state(path: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer from `path` (onto the model's device); return the header."""
    tensors = read_tensors(path)
    header = read_training_header(path)
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")},
                          strict=False)
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    return header


class MetricsLog:
    """metrics.jsonl: one JSON object per line (training steps, validations, the final report)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, **record) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Forget records logged after the state a run resumes from: they will be logged again."""
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if json.loads(line).get("step", 0) <= step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
