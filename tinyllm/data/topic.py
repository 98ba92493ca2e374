"""What a topic is: the record that both kinds of built-in document (stories and conversations) read.

Each topic carries activities for stories (with {placeholders} filled from the hero), terms to
define, a how-to, things people say, where and when it can happen, and optionally topic-specific
questions (`extras`, see `questions.py`) whose answers are computed from the world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from tinyllm.data.world import DAY_TIMES, SEASONS

# A question generator: (random stream, topic) -> (question, answer).
Asker = Callable[[random.Random, "Topic"], tuple[str, str]]


@dataclass(frozen=True)
class Topic:
    name: str
    keywords: tuple[str, ...]  # every document on the topic contains one of these (tests rely on it)
    activities: tuple[str, ...]  # past-tense verb phrases
    terms: tuple[tuple[str, str], ...]  # (term with article, definition)
    howto: tuple[str, tuple[str, ...]]  # (task, steps)
    quotes: tuple[str, ...]
    expert: str | None = None  # name of the character who knows the most about it
    places: tuple[str, ...] = ()  # where it can happen; empty means anywhere
    seasons: tuple[str, ...] = SEASONS
    times: tuple[str, ...] = DAY_TIMES
    weather: tuple[str, ...] = ()  # overrides the climate's words (a kite needs wind)
    extras: tuple[Asker, ...] = ()
