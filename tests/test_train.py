"""Training: the loss falls, an interrupted-and-resumed run equals an uninterrupted one (also when
`--resume` alone restores the run), contradicting flags are refused, the output directory is a
checkpoint, chat documents train on the assistant's replies, and bad settings are refused before
anything is written."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_train_config
from tinyllm.checkpoint import load_checkpoint
from tinyllm.cli import main
from tinyllm.config import preset
from tinyllm.errors import TinyLLMError
from tinyllm.train import Trainer, lr_at, train_config_for
from tinyllm.train_state import read_training_header


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


def same_weights(a_dir, b_dir):
    a, _ = load_checkpoint(a_dir)
    b, _ = load_checkpoint(b_dir)
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def train_cli(*args):
    return CliRunner().invoke(main, ["train", *map(str, args), "--quiet", "--no-facts"])


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A `test`-preset run (not the default preset) stopped at step 4 of 8, as Ctrl-C leaves it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    cfg = tiny_train_config(steps=8, eval_interval=4, lr=4e-3, batch_size=4)
    Trainer(preset("test"), cfg, out, quiet=True).run(stop_at=4)
    return out, cfg


def test_bare_resume_restores_the_run_and_reaches_the_uninterrupted_weights(stopped_run, tmp_path):
    stopped, cfg = stopped_run
    split = tmp_path / "split"
    shutil.copytree(stopped, split)
    result = train_cli("--out", split, "--resume")  # no preset, steps, lr, batch or corpus size given
    assert result.exit_code == 0, result.output
    Trainer(preset("test"), cfg, tmp_path / "whole", quiet=True).run()
    assert same_weights(split, tmp_path / "whole")
    assert json.loads((split / "config.json").read_text())["tinyllm"]["preset"] == "test"


def test_resume_refuses_flags_that_differ_and_allows_more_steps(stopped_run, tmp_path):
    stopped, _ = stopped_run
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    result = train_cli("--out", run_dir, "--resume", "--lr", "0.01", "--preset", "demo", "--steps", "6",
                       "--set", "n_layers=3", "--data", "other.txt")
    assert result.exit_code != 0 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    for differs in ("--preset demo (the run has test)", "--data other.txt (the run has builtin)",
                    "--lr 0.01 (the run has 0.004)", "--set n_layers=3 (the run has n_layers=2)",
                    "--steps 6 (the run has 8; only more steps may be given)"):
        assert differs in line, line
    result = train_cli("--out", run_dir, "--resume", "--preset", "test", "--lr", "0.004", "--steps", "10")
    assert result.exit_code == 0, result.output
    steps = [json.loads(line).get("step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 10


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
    (dict(train_on="questions"), "--train-on 'questions': choose one of assistant, all"),
])
def test_bad_settings_are_refused_before_writing(tmp_path, overrides, message):
    with pytest.raises(TinyLLMError, match=message):
        Trainer(preset("test"), tiny_train_config(**overrides), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_failure_before_the_first_save_removes_the_new_output_directory(tmp_path, monkeypatch):
    trainer = Trainer(preset("test"), tiny_train_config(steps=4, eval_interval=2), tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "config.json").is_file()

    def fail():
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(trainer, "train_step", fail)
    with pytest.raises(RuntimeError):
        trainer.run()
    assert not (tmp_path / "run").exists()


def test_chat_documents_train_on_the_assistants_replies_only(tmp_path):
    chats = Trainer(preset("test"), tiny_train_config(steps=1, train_on="assistant"), tmp_path / "a", quiet=True)
    everything = Trainer(preset("test"), tiny_train_config(steps=1, train_on="all"), tmp_path / "b", quiet=True)
    assert everything.train_targets.all()
    share = chats.train_targets.mean()
    assert 0.5 < share < 0.95  # the narratives' tokens and the chats' replies; not the questions
    everything.run()
    header = read_training_header(tmp_path / "b" / "training_state.safetensors")
    assert header["train_config"]["train_on"] == "all"  # recorded with the run, so --resume keeps it


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
