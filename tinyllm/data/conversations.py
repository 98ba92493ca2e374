"""ChatML conversations for the built-in corpus: one to three questions about a topic, and their answers.

The questions every topic can answer live here (a definition, a how-to, a short story, who the
expert is); a topic's own `extras` (see `questions.py`) join them, counted twice. A conversation
may open with a system prompt and a greeting, and may end with thanks.
"""

from __future__ import annotations

import random

from tinyllm.chat import render_chat
from tinyllm.data.narratives import generate_narrative
from tinyllm.data.topic import Asker, Topic
from tinyllm.data.world import PEOPLE, PLACES, upper_first

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly guide to the towns of the Amber Coast.",
    "You are a kind helper. Keep your answers short and clear.",
    "You know everyone who lives on the Amber Coast — their homes, jobs and pets.",
)
_GREETINGS = ("", "", "", "", "Hi! ", "Hello! ")
_ANSWER_OPENERS = ("", "", "", "Sure! ", "Of course. ")
_THANKS = (
    ("Thank you!", "You're welcome!"),
    ("Thanks, that helps.", "I'm glad it helps. Ask me anything else any time."),
    ("That's great, thanks!", "You're welcome — have a lovely day!"),
)


def _ask_definition(rng: random.Random, topic: Topic) -> tuple[str, str]:
    term, meaning = rng.choice(topic.terms)
    question = rng.choice(("What is {t}?", "Can you tell me what {t} is?", "Explain what {t} is, please."))
    return question.format(t=term), f"{upper_first(term)} is {meaning}."


def _ask_howto(rng: random.Random, topic: Topic) -> tuple[str, str]:
    task, steps = topic.howto
    question = rng.choice(("How do I {t}?", "Can you tell me how to {t}?", "What's the best way to {t}?"))
    if rng.random() < 0.5:
        answer = f"Here is how to {task}:\n" + "\n".join(f"{i}. {upper_first(s)}." for i, s in enumerate(steps, 1))
    else:
        order = ["First", "Then", "After that"][:len(steps) - 1] + ["Finally"]
        answer = " ".join(f"{word}, {step}." for word, step in zip(order, steps))
    return question.format(t=task), answer


def _ask_story(rng: random.Random, topic: Topic) -> tuple[str, str]:
    question = rng.choice(("Tell me a short story about {t}.", "Can you tell me a story about {t}?",
                           "Write a little story about {t}, please."))
    return question.format(t=topic.name), generate_narrative(rng, topic, short=True)


def _ask_expert(rng: random.Random, topic: Topic) -> tuple[str, str]:
    person = PEOPLE[topic.expert]
    question = rng.choice(("Who knows a lot about {t}?", "Who should I ask about {t}?"))
    return (question.format(t=topic.name),
            f"{person.name}, the {person.job} from {PLACES[person.home].name}, knows all about {topic.name}.")


def _askers(topic: Topic) -> list[Asker]:
    askers: list[Asker] = [_ask_definition, _ask_howto, _ask_story]
    if topic.expert:
        askers.append(_ask_expert)
    # Topic-specific questions twice over: they carry the facts worth learning, and each call
    # asks something different.
    return askers + list(topic.extras) * 2


def generate_conversation(rng: random.Random, topic: Topic) -> str:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    turns = rng.choice((1, 1, 2, 2, 3))
    # Drawn without replacement, so no conversation asks for two definitions or two stories.
    for turn, ask in enumerate(rng.sample(_askers(topic), turns)):
        if turn and turn == turns - 1 and rng.random() < 0.3:
            question, answer = rng.choice(_THANKS)
        else:
            question, answer = ask(rng, topic)
            answer = rng.choice(_ANSWER_OPENERS) + answer
        if turn == 0:
            question = rng.choice(_GREETINGS) + question
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return render_chat(messages)
