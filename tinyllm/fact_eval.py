"""World-fact accuracy: ask a model the built-in world's facts in chat and check its greedy answers.

Every fact of `tinyllm.data.facts` is asked once in a phrasing the corpus trains on and once in a
held-out phrasing that no built-in document contains (half of them as the second turn of a chat);
an answer is right when it names the fact's value and no competing value of its kind. Runs on any
`Runtime` through the shared chat code, so every format is asked the same questions the same way.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from tinyllm.data.facts import FactQuestion, chance_accuracy, fact_questions, states
from tinyllm.generate import ChatSession
from tinyllm.runtime import Runtime
from tinyllm.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0)
_SLACK_TOKENS = 8  # beyond the longest answer the corpus gives for a fact


def fact_accuracy(runtime: Runtime, questions: list[FactQuestion] | None = None, progress: bool = True) -> dict:
    """Shares of right greedy answers on seen and on held-out phrasings, with counts per kind."""
    questions = fact_questions() if questions is None else questions
    right = {False: 0, True: 0}
    asked = {False: 0, True: 0}
    by_kind: dict[str, list[int]] = {}
    for question in tqdm(questions, desc="world facts", unit="question", disable=not progress,
                         file=sys.stderr, leave=False):
        fact = question.fact
        budget = max(len(runtime.tokenizer.encode(a)) for a in fact.answers) + _SLACK_TOKENS
        session = ChatSession(runtime, GREEDY, budget)
        session.messages = list(question.messages[:-1])
        answer, _ = session.reply(question.messages[-1]["content"])
        ok = states(answer, fact)
        right[question.held_out] += ok
        asked[question.held_out] += 1
        counts = by_kind.setdefault(fact.kind, [0, 0, 0, 0])  # seen right, seen asked, held-out right, asked
        counts[2 * question.held_out] += ok
        counts[2 * question.held_out + 1] += 1
    return {"facts_seen": right[False] / max(1, asked[False]), "facts_held_out": right[True] / max(1, asked[True]),
            "facts_asked": asked[False] + asked[True], "facts_chance": chance_accuracy(questions),
            "facts_by_kind": by_kind}


def format_fact_accuracy(report: dict) -> str:
    kinds = ", ".join(f"{kind} {c[0]}/{c[1]}·{c[2]}/{c[3]}" for kind, c in report["facts_by_kind"].items())
    return (f"world-fact accuracy {report['facts_seen']:.1%} on seen phrasings, {report['facts_held_out']:.1%} on "
            f"held-out phrasings ({report['facts_asked']} chat questions, greedy answers; chance "
            f"{report['facts_chance']:.1%})\n  by kind, seen·held-out: {kinds}")
