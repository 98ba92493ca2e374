"""The built-in corpus: stories and conversations on every topic, and chats on the world's facts.

Deterministic and offline. The topics are dealt from a deck that is reshuffled every round; between
topic documents come question-answer chats on the world's facts (`facts.py`, from a random stream
of their own) whenever they are behind their share of the characters so far. Documents are
generated one at a time until the corpus reaches the requested size, so a smaller size gives a
prefix of a larger one. Changing TOPICS (or their order) changes every document.
"""

from __future__ import annotations

import random

from tinyllm.data.conversations import SYSTEM_PROMPTS, generate_conversation
from tinyllm.data.facts import generate_fact_chat
from tinyllm.data.narratives import generate_narrative
from tinyllm.data.topics_coast_and_country import COAST_AND_COUNTRY_TOPICS
from tinyllm.data.topics_nature_and_daily_life import NATURE_AND_DAILY_LIFE_TOPICS
from tinyllm.data.topics_town_and_school import TOWN_AND_SCHOOL_TOPICS

BUILTIN_DEFAULT_SIZE = 3_000_000  # characters, "a few MB"
BUILTIN_QA_FRACTION = 0.3  # of the characters: chats on the world's facts
FACTS_TAG = "world facts"  # the topic name the fact chats are tagged with
TOPICS = COAST_AND_COUNTRY_TOPICS + TOWN_AND_SCHOOL_TOPICS + NATURE_AND_DAILY_LIFE_TOPICS

# For every topic, each shuffled round holds 3 narratives and 2 conversations: the topic documents
# are 60/40 by count, and every topic shows up in both forms within one round of len(TOPICS) * 5.
_ROUND = (False, False, False, True, True)


def generate_builtin_corpus_with_topics(size: int = BUILTIN_DEFAULT_SIZE, seed: int = 0,
                                        qa_fraction: float = BUILTIN_QA_FRACTION) -> list[tuple[str, str]]:
    """(topic name, document) pairs of the built-in corpus (FACTS_TAG for the fact chats); see
    `generate_builtin_corpus`."""
    rng, facts_rng = random.Random(seed), random.Random(f"facts {seed}")
    deck = [(topic, chat) for topic in TOPICS for chat in _ROUND]
    out: list[tuple[str, str]] = []
    total = facts = 0
    while True:
        rng.shuffle(deck)
        for topic, chat in deck:
            while qa_fraction > 0 and facts <= qa_fraction * total:
                out.append((FACTS_TAG, generate_fact_chat(facts_rng, SYSTEM_PROMPTS)))
                facts += len(out[-1][1])
                total += len(out[-1][1])
                if total >= size:
                    return out
            doc = generate_conversation(rng, topic) if chat else generate_narrative(rng, topic)
            out.append((topic.name, doc))
            total += len(doc)
            if total >= size:
                return out


def generate_builtin_corpus(size: int = BUILTIN_DEFAULT_SIZE, seed: int = 0,
                            qa_fraction: float = BUILTIN_QA_FRACTION) -> list[str]:
    """Documents (strings) whose total length is >= size characters (stop at the first document past it),
    `qa_fraction` of the characters (to within a document) in chats on the world's facts.

    Deterministic in (size, seed, qa_fraction); documents come one at a time, so a smaller size gives
    a prefix of a larger one's documents.
    """
    return [doc for _, doc in generate_builtin_corpus_with_topics(size, seed, qa_fraction)]
