"""The built-in corpus: stories and conversations on every topic, drawn from one seeded random stream.

Deterministic and offline. The topics are dealt from a deck that is reshuffled every round, and
documents are generated one at a time until the corpus reaches the requested size, so a smaller
size gives a prefix of a larger one. Changing TOPICS (or their order) changes every document.
"""

from __future__ import annotations

import random

from tinyllm.data.conversations import generate_conversation
from tinyllm.data.narratives import generate_narrative
from tinyllm.data.topics_coast_and_country import COAST_AND_COUNTRY_TOPICS
from tinyllm.data.topics_nature_and_daily_life import NATURE_AND_DAILY_LIFE_TOPICS
from tinyllm.data.topics_town_and_school import TOWN_AND_SCHOOL_TOPICS

BUILTIN_DEFAULT_SIZE = 3_000_000  # characters, "a few MB"
TOPICS = COAST_AND_COUNTRY_TOPICS + TOWN_AND_SCHOOL_TOPICS + NATURE_AND_DAILY_LIFE_TOPICS

# For every topic, each shuffled round holds 3 narratives and 2 conversations: the corpus is 60/40
# by count, and every topic shows up in both forms within one round of len(TOPICS) * 5 documents.
_ROUND = (False, False, False, True, True)


def generate_builtin_corpus_with_topics(size: int = BUILTIN_DEFAULT_SIZE,
                                        seed: int = 0) -> list[tuple[str, str]]:
    """(topic name, document) pairs of the built-in corpus; see `generate_builtin_corpus`."""
    rng = random.Random(seed)
    deck = [(topic, chat) for topic in TOPICS for chat in _ROUND]
    out: list[tuple[str, str]] = []
    total = 0
    while total < size:
        rng.shuffle(deck)
        for topic, chat in deck:
            doc = generate_conversation(rng, topic) if chat else generate_narrative(rng, topic)
            out.append((topic.name, doc))
            total += len(doc)
            if total >= size:
                break
    return out


def generate_builtin_corpus(size: int = BUILTIN_DEFAULT_SIZE, seed: int = 0) -> list[str]:
    """Documents (strings) whose total length is >= size characters (stop at the first document past it).

    Deterministic in (size, seed); documents come one at a time from one random stream, so a
    smaller size gives a prefix of a larger one's documents.
    """
    return [doc for _, doc in generate_builtin_corpus_with_topics(size, seed)]
