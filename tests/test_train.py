"""Training: the loss falls, an interrupted-and-resumed run equals an uninterrupted one, the
output directory is a checkpoint, and bad settings are refused before anything is written."""

import json

import pytest
import torch

from conftest import tiny_train_config
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import preset
from tinyllm.errors import TinyLLMError
from tinyllm.train import Trainer, lr_at, train_config_for


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_validation_is_logged(trained_checkpoint):
    records = metrics(trained_checkpoint)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 1.0  # nats: from ~6 to ~4.4 in 60 steps
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [20, 40, 60]
    assert vals[-1]["val_ppl"] < vals[0]["val_ppl"]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    cfg = tiny_train_config(steps=12, eval_interval=4)
    whole = Trainer(preset("test"), cfg, tmp_path / "whole", quiet=True)
    whole.run()

    first = Trainer(preset("test"), cfg, tmp_path / "split", quiet=True)
    first.run(stop_at=6)  # as Ctrl-C does: stop between steps, save, exit
    assert first.step == 6
    second = Trainer(preset("test"), cfg, tmp_path / "split", resume=True, quiet=True)
    assert second.step == 6
    second.run()

    assert [r["loss"] for r in metrics(tmp_path / "split") if "loss" in r] == \
        [r["loss"] for r in metrics(tmp_path / "whole") if "loss" in r]
    a, _ = load_checkpoint(tmp_path / "whole")
    b, _ = load_checkpoint(tmp_path / "split")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_existing_output_needs_force_or_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(TinyLLMError, match="already exists; pass --resume .* or --force"):
        Trainer(preset("test"), tiny_train_config(steps=1), out, quiet=True)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(TinyLLMError, match="nothing to resume"):
        Trainer(preset("test"), tiny_train_config(steps=1), tmp_path / "fresh", resume=True, quiet=True)


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=6, grad_accum=4), "not a multiple of --grad-accum"),
    (dict(steps=0), "--steps must be positive"),
    (dict(lr=-1.0), "--lr must be positive"),
])
def test_bad_settings_are_refused_before_writing(tmp_path, overrides, message):
    with pytest.raises(TinyLLMError, match=message):
        Trainer(preset("test"), tiny_train_config(**overrides), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = Trainer(preset("test"), tiny_train_config(steps=3, batch_size=8), tmp_path / "a", quiet=True)
    four = Trainer(preset("test"), tiny_train_config(steps=3, batch_size=8, grad_accum=4), tmp_path / "b", quiet=True)
    assert [one.train_step() for _ in range(3)] == pytest.approx([four.train_step() for _ in range(3)], rel=1e-5)


def test_schedule_warms_up_then_decays():
    cfg = train_config_for("test", steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
