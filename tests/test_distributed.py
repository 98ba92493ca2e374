"""Multi-process training on torch.distributed (gloo, 2 CPU processes): the same global batch
gives the same losses as one process, and a 2-process checkpoint resumes in 1 process.
GPU paths run only where a GPU is present."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_train_config
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import preset
from tinyllm.distributed import Distributed
from tinyllm.errors import TinyLLMError
from tinyllm.train import Trainer

TRAIN_FLAGS = ["--preset", "test", "--corpus-size", "300000", "--steps", "6", "--batch-size", "8",
               "--eval-interval", "3", "--quiet", "--device", "cpu"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def train_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "tinyllm.cli", "train", *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_match_one_process(tmp_path):
    train_cli(*TRAIN_FLAGS, "--nproc", "2", "--out", tmp_path / "two")
    train_cli(*TRAIN_FLAGS, "--out", tmp_path / "one")
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(two) == len(one) == 6
    assert two == pytest.approx(one, rel=2e-5)
    assert losses(tmp_path / "two", "val_loss") == pytest.approx(losses(tmp_path / "one", "val_loss"), rel=2e-5)
    header = (tmp_path / "two" / "metrics.jsonl").read_text()
    assert header.count('"event": "final"') == 1  # only rank 0 writes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out: str, stop_at: int):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = Distributed.from_environment(torch.device("cpu"))
    try:
        Trainer(preset("test"), tiny_train_config(steps=8, eval_interval=4), out, quiet=True, dist=dist).run(
            stop_at=stop_at)
    finally:
        dist.close()


def test_two_process_checkpoint_resumes_in_one_process(tmp_path):
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path / "split"), 5), nprocs=2, join=True)
    resumed = Trainer(preset("test"), tiny_train_config(steps=8, eval_interval=4), tmp_path / "split",
                      resume=True, quiet=True)
    assert resumed.step == 5
    resumed.run()
    straight = Trainer(preset("test"), tiny_train_config(steps=8, eval_interval=4), tmp_path / "straight",
                       quiet=True)
    straight.run()
    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "straight"), rel=2e-5)
    a, _ = load_checkpoint(tmp_path / "split")
    b, _ = load_checkpoint(tmp_path / "straight")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=name)


def test_batch_must_split_across_processes():
    with pytest.raises(TinyLLMError, match="not a multiple of --grad-accum 2 x 3 processes"):
        Trainer._validate(tiny_train_config(batch_size=8, grad_accum=2), preset("test"), world_size=3)


def test_cuda_request_without_a_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TinyLLMError, match="no CUDA device visible"):
        Trainer(preset("test"), tiny_train_config(device="cuda"), tmp_path / "run", quiet=True)


@needs_cuda
def test_cuda_training_uses_mixed_precision_and_learns(tmp_path):
    trainer = Trainer(preset("test"), tiny_train_config(device="cuda", steps=20), tmp_path / "run", quiet=True)
    first = trainer.train_step()
    trainer.run()
    assert trainer.device.type == "cuda"
    assert losses(tmp_path / "run")[-1] < first


@needs_cuda
def test_cuda_generation_matches_cpu(trained_checkpoint):
    from tinyllm.generate import generate_text
    from tinyllm.runtime import load_runtime
    from tinyllm.sampling import SamplingParams

    greedy = SamplingParams(temperature=0, repetition_penalty=1.0)
    cpu = generate_text(load_runtime(trained_checkpoint, device="cpu"), "Mira", 32, greedy)
    gpu = generate_text(load_runtime(trained_checkpoint, device="cuda"), "Mira", 32, greedy)
    assert gpu == cpu
