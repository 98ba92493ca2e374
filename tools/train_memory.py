"""Training memory per preset: measured peak resident memory of a float32 training step on CPU.

For each preset, two fresh processes each run two full training steps (forward, backward, AdamW)
at batch sizes 1 and 2 with the preset's full context, and report their peak RSS. The difference is
the activation memory of one sequence; the rest is weights, gradients, AdamW moments and the
interpreter. Extrapolating linearly gives the memory of a training batch of any size.

float32 activations on CPU are an upper bound for bf16 autocast on a GPU (which keeps bf16 copies
for matmuls but float32 weights, gradients and moments: the fixed part is the same, 16 bytes per
parameter). Run: `python tools/train_memory.py --presets demo,small,base --batch 16,64`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import click

STEP = """
import json, resource, torch
from tinyllm.config import preset
from tinyllm.model import Transformer
from tinyllm.train import TrainConfig, make_optimizer
torch.manual_seed(0)
config = preset({name!r})
model = Transformer(config)
optimizer = make_optimizer(model, TrainConfig())
x = torch.randint(0, config.vocab_size, ({batch}, config.max_seq_len + 1))
for _ in range(2):
    model.loss(x[:, :-1], x[:, 1:]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def peak_rss_mib(name: str, batch: int) -> float:
    out = subprocess.run([sys.executable, "-c", STEP.format(name=name, batch=batch)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1]) / 1024  # ru_maxrss is KiB on Linux


@click.command()
@click.option("--presets", default="demo,small,base", show_default=True)
@click.option("--batch", "batches", default="16,64", show_default=True,
              help="Batch sizes (sequences per step) to extrapolate to.")
def main(presets: str, batches: str) -> None:
    from tinyllm.config import preset

    sizes = [int(b) for b in batches.split(",")]
    header = f"{'preset':<8}{'params':>9}{'fixed MiB':>11}{'MiB/sequence':>14}" + "".join(
        f"{f'batch {b} GiB':>14}" for b in sizes)
    print(header)
    for name in presets.split(","):
        one, two = peak_rss_mib(name, 1), peak_rss_mib(name, 2)
        per_seq = two - one
        fixed = one - per_seq
        row = f"{name:<8}{preset(name).num_params() / 1e6:>8.1f}M{fixed:>11,.0f}{per_seq:>14,.0f}"
        row += "".join(f"{(fixed + b * per_seq) / 1024:>14.1f}" for b in sizes)
        print(row, flush=True)
    print(f"(peak RSS of float32 CPU training steps at the preset's context; "
          f"this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
