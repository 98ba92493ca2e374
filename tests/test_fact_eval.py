"""World-fact accuracy: a small model trained on question-answer chats about its world answers them
far above chance, in held-out phrasings too; a model that has not learned them does not; and data
without the built-in world's facts gets one line instead of a number."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from tinyllm.cli import main
from tinyllm.config import preset
from tinyllm.data import write_corpus
from tinyllm.data.facts import FACTS_BY_KIND, fact_questions, generate_fact_chat
from tinyllm.dataset import DataSpec
from tinyllm.fact_eval import fact_accuracy, format_fact_accuracy
from tinyllm.runtime import load_runtime
from tinyllm.train import Trainer, train_config_for

KINDS = ("home", "pet")  # 24 facts a `test`-preset model learns in a few hundred steps (96% in 250)
QA_STEPS = 250


def subset_questions():
    return [q for q in fact_questions() if q.fact.kind in KINDS]


@pytest.fixture(scope="session")
def qa_checkpoint(tmp_path_factory):
    """A `test`-preset model trained on nothing but chats about the homes and pets of the world."""
    directory = tmp_path_factory.mktemp("qa")
    facts = tuple(f for kind in KINDS for f in FACTS_BY_KIND[kind])
    rng = random.Random(0)
    write_corpus([generate_fact_chat(rng, facts=facts) for _ in range(3000)], directory / "qa.txt")
    cfg = train_config_for("test", steps=QA_STEPS, eval_interval=QA_STEPS, lr=6e-3, device="cpu",
                           data=DataSpec(source=str(directory / "qa.txt")))
    Trainer(preset("test"), cfg, directory / "run", quiet=True).run()
    return directory / "run"


def test_a_model_trained_on_fact_chats_answers_far_above_chance(qa_checkpoint):
    report = fact_accuracy(load_runtime(qa_checkpoint, threads=1), subset_questions(), progress=False)
    chance = report["facts_chance"]
    assert 0.1 < chance < 0.12  # 7 places for a home, 12 kinds of pet
    # Margins: 50 points above chance on the phrasings it trained on, 40 on the held-out ones.
    assert report["facts_seen"] >= chance + 0.5, format_fact_accuracy(report)
    assert report["facts_held_out"] >= chance + 0.4, format_fact_accuracy(report)
    assert report["facts_asked"] == 2 * 2 * 12
    assert set(report["facts_by_kind"]) == set(KINDS)


def test_a_model_that_has_not_learned_the_facts_stays_near_chance(trained_checkpoint):
    report = fact_accuracy(load_runtime(trained_checkpoint, threads=1), subset_questions(), progress=False)
    assert report["facts_seen"] <= report["facts_chance"] + 0.25, format_fact_accuracy(report)


def test_eval_of_a_model_trained_on_other_data_says_why_there_is_no_accuracy(qa_checkpoint):
    # Its chats hold no narrative to take a validation text from, so perplexity is on its corpus file.
    result = CliRunner().invoke(main, ["eval", str(qa_checkpoint), "--data", str(qa_checkpoint.parent / "qa.txt")])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if "world-fact" in line]
    assert line.startswith("world-fact accuracy: not measured (the model trained on ")
    assert "only the built-in world has facts to ask" in line
