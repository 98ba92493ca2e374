"""Multi-process training plumbing on torch.distributed: who am I, talk to the others, launch.

Under `torchrun` (or `tinyllm train --nproc N`, which starts torchrun) every process is one rank
of a DistributedDataParallel run: `nccl` between GPUs, `gloo` between CPU processes. A single
process needs none of it: `Distributed.single()` answers every question locally, so the trainer
has one code path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tinyllm.errors import TinyLLMError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def single(cls) -> "Distributed":
        return cls()

    @classmethod
    def from_environment(cls, device: torch.device) -> "Distributed":
        """Join the process group torchrun describes in the environment (or stay single)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls.single()
        ctx = cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        return ctx

    def device_for(self, device: torch.device) -> torch.device:
        """One GPU per process: rank r on a node uses cuda:local_rank."""
        if device.type == "cuda" and self.enabled:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of `value` over all ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t)
        return bool(t.item())

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m tinyllm.train ARGS` under torchrun with `nproc` processes on this machine."""
    if nproc < 1:
        raise TinyLLMError(f"--nproc {nproc}: must be at least 1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "tinyllm.train", *args]
    env = dict(os.environ)
    # Each process gets its share of the cores rather than all of them (which would oversubscribe).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(command, env=env)
