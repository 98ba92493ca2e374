"""The world's facts as questions and answers: every person and place of `world.py`, asked many ways.

A fact is one attribute of one subject (Mira's home, Saltmere's winter weather, the way from
Saltmere to Åsbury) with the value a right answer names, the values of the same attribute for
other subjects (which a right answer does not name) and the sentences that state it, all derived
from the world's tables. Every kind of fact has training phrasings of its question and held-out
phrasings that no built-in document contains: `tinyllm eval` asks both (`fact_questions`) and
checks the greedy answer with `states`. The built-in corpus gets its question-answer chats, single-
and multi-turn, from `generate_fact_chat`, and the topic conversations ask facts through `ask_fact`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tinyllm.chat import render_chat
from tinyllm.data.world import (CHARACTERS, PLACES, PRONOUNS, RAILWAY, SEASONS, direction, join_with_and,
                                nearest_station, upper_first, with_article)


@dataclass(frozen=True)
class FactKind:
    name: str
    questions: tuple[str, ...]  # trained on: topic conversations and fact chats ask these
    held_out: tuple[str, ...]  # never in any built-in document; only `tinyllm eval` asks them


@dataclass(frozen=True)
class Fact:
    kind: str
    subject: str  # whom or what it is about: a person, a place (a direction is about where it starts)
    fields: dict  # what the phrasings of its kind are formatted with
    value: tuple[str, ...]  # a right answer names every one of these
    wrong: tuple[str, ...]  # the same attribute of other subjects: a right answer names none
    answers: tuple[str, ...]  # sentences that state the fact

    def question(self, phrasing: str) -> str:
        return phrasing.format(**self.fields)


KINDS = {kind.name: kind for kind in (
    FactKind("home",
             ("Where does {n} live?", "Where is {n}'s home?", "Which town does {n} live in?",
              "Where does {n} come from?", "What town is {n} from?", "Where is {n}'s house?",
              "Do you know where {n} lives?", "In which place does {n} live?", "Can you tell me where {n} lives?",
              "Where can I find {n}'s home?", "Tell me where {n} lives.", "Where would I find {n}?",
              "In what town is {n}'s house?", "{n}? Where does {he} live?", "Whereabouts does {n} live?",
              "I'm looking for {n}. Where does {he} live?", "What is the name of the town where {n} lives?",
              "Where does {n} have {his} home?", "Where do I go to see {n}?", "What town does {n} call home?",
              "Name the town {n} lives in.", "Where is {n} living these days?", "About {n}: where does {he} live?"),
             ("Which place is {n}'s home town?", "If I want to visit {n}, which town should I go to?",
              "{n} lives where?")),
    FactKind("job",
             ("What does {n} do?", "What is {n}'s job?", "What work does {n} do?", "What does {n} do for a living?",
              "What job does {n} have?", "What is {n}'s work?", "How does {n} earn a living?",
              "Can you tell me what {n} does?", "What does {n} work as?", "Tell me about {n}'s job.",
              "What is {n}'s trade?", "What is {n}'s occupation?", "{n}? What does {he} do?",
              "What does {n} do at work?", "Tell me what {n} does for work.", "What is {n} by trade?",
              "Do you know what job {n} has?", "How does {n} spend {his} working day?", "What is {n}'s profession?",
              "What does {n} do in {his} town?", "Name {n}'s job.", "How does {n} make {his} money?",
              "About {n}: what does {he} do?"),
             ("What is {n}'s line of work?", "What kind of work does {n} do every day?", "Which job does {n} do?")),
    FactKind("pet",
             ("What pet does {n} have?", "Does {n} have a pet?", "What animal does {n} keep?",
              "What kind of pet does {n} keep?", "Has {n} got a pet?", "What pet lives with {n}?",
              "Tell me about {n}'s pet.", "Which animal does {n} look after at home?", "Does {n} keep any animals?",
              "What animal lives with {n}?", "Which pet does {n} have?", "Tell me what pet {n} has.",
              "{n}? What pet does {he} keep?", "What pet has {n} got?", "Does {n} look after a pet?",
              "What animal belongs to {n}?", "Name the animal {n} keeps.", "Which animal keeps {n} company?",
              "What creature does {n} care for?", "About {n}: what pet does {he} keep?"),
             ("What sort of animal is {n}'s pet?", "Is there an animal at {n}'s house?", "What pet does {n} own?")),
    FactKind("pet name",
             ("What is the name of {n}'s {kind}?", "What is {n}'s {kind} called?", "What is {n}'s pet called?",
              "What's the name of {n}'s pet?", "What does {n} call {his} {kind}?", "What is the name of {n}'s pet?",
              "Do you know what {n}'s pet is called?", "What do people call {n}'s {kind}?",
              "Tell me what {n}'s {kind} is called.", "What is {n}'s {kind} named?", "{n}? What is {his} pet called?",
              "Which name does {n}'s {kind} answer to?", "What's {n}'s pet's name?", "How is {n}'s {kind} called?",
              "What does {n} call the pet?", "By what name is {n}'s {kind} known?",
              "About {n}: what is {his} pet called?"),
             ("What name did {n} give {his} {kind}?", "Tell me the name of {n}'s pet.",
              "{n}'s {kind} has a name. What is it?")),
    FactKind("food",
             ("What is {n}'s favourite food?", "What does {n} like to eat best?", "What should I cook for {n}?",
              "What food does {n} love?", "Which dish does {n} like most?", "What is {n}'s favourite meal?",
              "What does {n} love to eat?", "If {n} comes for supper, what should I make?",
              "What does {n} like to eat?", "What is {n}'s favourite dish?", "Which meal does {n} enjoy most?",
              "What does {n} enjoy eating?", "Tell me {n}'s favourite food.", "What would make a good supper for {n}?",
              "{n}? What does {he} like to eat?", "What dish would please {n} most?",
              "What does {n} always want for dinner?", "What food should I bring {n}?",
              "What is {n} fondest of eating?", "Name {n}'s favourite food.",
              "What is the one dish {n} can never refuse?", "About {n}: what does {he} like to eat?"),
             ("What food makes {n} happiest?", "Which food does {n} like best of all?",
              "What would {n} choose to eat?")),
    FactKind("temperament",
             ("What is {n} like?", "What kind of person is {n}?", "How would you describe {n}?",
              "What sort of person is {n}?", "Tell me what {n} is like.", "How does {n} seem to people?",
              "What is {n}'s temperament?", "What is {n}'s nature?", "How does {n} behave?", "What is {n}'s manner?",
              "How is {n} with other people?", "{n}? What is {he} like?", "What sort of personality does {n} have?",
              "How would people describe {n}?", "Tell me about {n}'s personality.",
              "What kind of nature does {n} have?", "What temper does {n} have?", "How would you sum up {n}?",
              "What kind of mood is {n} usually in?", "About {n}: what is {he} like?"),
             ("Describe {n}'s character.", "What is {n} like as a person?", "What are {n}'s ways like?")),
    FactKind("climate",
             ("What is the weather like in {p} in {s}?", "How is the weather in {p} during {s}?",
              "I'm visiting {p} in {s}. What weather should I expect?", "What is {p} like in {s}?",
              "What's the weather in {p} in {s}?", "What weather does {p} have in {s}?", "How is {p} in {s}?",
              "Tell me about the weather in {p} in {s}.", "What weather does {p} get in {s}?"),
             ("In {s}, what is the weather in {p} like?", "What kind of weather should I pack for in {p} in {s}?",
              "What is {s} like in {p}?")),
    FactKind("railway",
             ("Which stations are next to {p} on the coast railway?", "What are the stations either side of {p}?",
              "Which stations are nearest to {p} on the railway?", "On the coast railway, which stations are near {p}?",
              "What are the neighbouring stations of {p}?", "Where does the train stop near {p}?",
              "Which stations come before and after {p}?", "Near {p}, where does the train stop?"),
             ("Which stops are beside {p} on the railway line?", "Name the stations closest to {p} on the train line.",
              "If I go by train, which stations are next to {p}?")),
    FactKind("direction",
             ("Which way is {b} from {a}?", "On the map, in which direction is {b} from {a}?",
              "If I am in {a}, which way do I go to reach {b}?", "In which direction is {b} from {a}?",
              "Which direction is {b} from {a}?", "Is {b} north, south, east or west of {a}?",
              "Which way do I go from {a} to get to {b}?", "Where is {b} from {a} on the map?",
              "Which way is it from {a} to {b}?", "Which direction do I take from {a} for {b}?",
              "{b} is which way from {a}?", "Which way to {b} from {a}?", "Seen from {a}, where is {b}?",
              "Leaving {a}, which way should I head for {b}?",
              "If I start at {a}, is {b} north, south, east or west?",
              "My walk starts in {a} and ends in {b}. Which way is that?",
              "Compared with {a}, where does {b} sit on the map?"),
             ("From {a}, in which direction does {b} lie?", "I am in {a}. Which way is {b}?",
              "What direction should I travel in to go from {a} to {b}?")),
)}

COMPASS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")


def _mentions(text: str, phrase: str) -> bool:
    """`phrase` as whole words: "north" is not in "north-east", "hen" is not in "then"."""
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text, re.IGNORECASE) is not None


def states(answer: str, fact: Fact) -> bool:
    """Whether `answer` names the fact's value and no competing value of its kind."""
    return all(_mentions(answer, v) for v in fact.value) and not any(_mentions(answer, w) for w in fact.wrong)


def _fact(kind: str, subject: str, fields: dict, value: tuple[str, ...], rivals, answers: tuple[str, ...]) -> Fact:
    # A rival the fact's own answers name (François "was kind underneath") cannot count against it.
    wrong = tuple(sorted({r for r in rivals if r not in value and not any(_mentions(a, r) for a in answers)}))
    return Fact(kind, subject, fields, value, wrong, answers)


def _person_facts() -> list[Fact]:
    facts = []
    for c in CHARACTERS:
        others = [o for o in CHARACTERS if o is not c]
        he, _, his = PRONOUNS[c.he]
        home = PLACES[c.home]
        f = {"n": c.name, "he": he, "his": his, "kind": c.pet.kind}
        pet = f"{with_article(c.pet.colour)} {c.pet.kind} called {c.pet.name}"
        facts += [
            _fact("home", c.name, f, (home.name,), [p.name for p in PLACES.values()],
                  (f"{c.name} lives in {home.name}, the {home.kind}.", f"{c.name} lives in {home.name}.",
                   f"{c.name}'s home is in {home.name}, the {home.kind}.")),
            _fact("job", c.name, f, (c.job,), [o.job for o in others],
                  (f"{c.name} works as {with_article(c.job)} in {home.name}: {he} {c.work}.",
                   f"{c.name} works as {with_article(c.job)}.",
                   f"{c.name} is the {c.job} in {home.name}; that is {his} job.")),
            _fact("pet", c.name, f, (c.pet.kind,), [o.pet.kind for o in others],
                  (f"{c.name} has {pet}.", f"{c.name} keeps {pet}.", f"{c.name}'s pet is {pet}.")),
            _fact("pet name", c.name, f, (c.pet.name,), [o.pet.name for o in others],
                  (f"{c.name}'s {c.pet.kind} is called {c.pet.name}.",
                   f"{c.name}'s {c.pet.colour} {c.pet.kind} is called {c.pet.name}.",
                   f"{c.pet.name} — that is the name of {c.name}'s {c.pet.kind}.")),
            _fact("food", c.name, f, (c.food,), [o.food for o in others],
                  (f"{c.name}'s favourite food is {c.food}.", f"{c.name} loves {c.food} best of all.",
                   f"Cook {c.food} — it is {c.name}'s favourite food.")),
            _fact("temperament", c.name, f, (c.temperament,), [o.temperament for o in others],
                  (f"{c.name} is {c.temperament}.", f"{c.name} is very {c.temperament}.",
                   f"{c.name} is {c.temperament}: everyone in {home.name} says so.")),
        ]
    return facts


def _railway_answers(key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    name = PLACES[key].name
    if key not in RAILWAY:
        nearest = PLACES[nearest_station(key)].name
        return (nearest,), (f"{name} has no station of its own; the nearest station is {nearest}.",
                            f"There is no station in {name}. The nearest one is {nearest}.")
    i = RAILWAY.index(key)
    next_to = tuple(PLACES[s].name for s in RAILWAY[max(0, i - 1):i + 2] if s != key)
    if len(next_to) == 1:
        return next_to, (f"{name} is at the end of the coast railway; the only station next to it is {next_to[0]}.",
                         f"The only station next to {name} is {next_to[0]}: {name} is at the end of the line.")
    listed = join_with_and(list(next_to))
    return next_to, (f"On the coast railway, the stations next to {name} are {listed}.",
                     f"The stations either side of {name} are {listed}.")


def _place_facts() -> list[Fact]:
    facts = []
    for key, place in PLACES.items():
        p = place.name
        for s in SEASONS:
            d = place.climate[s][1]
            facts.append(_fact("climate", p, {"p": p, "s": s}, (d,),
                               [other.climate[t][1] for other in PLACES.values() for t in SEASONS],
                               (f"In {s}, the weather in {p} is usually {d}.", f"In {s}, {p} is {d}.",
                                f"{upper_first(s)} in {p} is {d}.")))
        value, answers = _railway_answers(key)
        facts.append(_fact("railway", p, {"p": p}, value, [PLACES[s].name for s in RAILWAY if s != key], answers))
        for other_key, other in PLACES.items():
            if other_key != key:
                way, b = direction(key, other_key), other.name
                facts.append(_fact("direction", p, {"a": p, "b": b}, (way,), COMPASS,
                                   (f"{b} is {way} of {p}.", f"From {p}, {b} lies to the {way}.",
                                    f"Go {way} from {p} to reach {b}.")))
    return facts


FACTS: tuple[Fact, ...] = tuple(_person_facts() + _place_facts())
FACTS_BY_KIND = {name: tuple(f for f in FACTS if f.kind == name) for name in KINDS}
_BY_SUBJECT: dict[str, list[Fact]] = {}
for _f in FACTS:
    _BY_SUBJECT.setdefault(_f.subject, []).append(_f)


# --- training ------------------------------------------------------------------------------------

def ask_fact(rng: random.Random, kind: str) -> tuple[str, str]:
    """A random fact of `kind` in a training phrasing, and an answer stating it."""
    return _ask(rng, rng.choice(FACTS_BY_KIND[kind]))


# Words around a question that do not change what it asks: a model that learns to look past them
# learns the question's subject and kind, not one sentence's surface.
OPENERS = ("Hello! ", "Hi. ", "Excuse me. ", "Quick question. ", "Good morning! ", "I have a question. ",
           "Sorry to bother you. ", "Hmm. ")
CLOSERS = (" Thanks!", " Thank you.", " I forgot.", " Do you know?", " Please tell me.", " I'd like to know.")
FRAMED = 0.25  # of the questions in fact chats and conversations


def _ask(rng: random.Random, fact: Fact) -> tuple[str, str]:
    question = fact.question(rng.choice(KINDS[fact.kind].questions))
    if rng.random() < FRAMED:
        question = rng.choice(OPENERS) + question if rng.random() < 0.5 else question + rng.choice(CLOSERS)
    return question, rng.choice(fact.answers)


def generate_fact_chat(rng: random.Random, system_prompts: tuple[str, ...] = (),
                       facts: tuple[Fact, ...] = FACTS) -> str:
    """A ChatML chat of one to three questions on `facts`, in training phrasings.

    Later questions often stay with the first one's subject, as a user asking about one person would.
    """
    messages = []
    if system_prompts and rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(system_prompts)})
    fact = rng.choice(facts)
    for turn in range(rng.choice((1, 1, 2, 3))):
        if turn:
            same_subject = [f for f in _BY_SUBJECT[fact.subject] if f in facts]
            fact = rng.choice(same_subject if rng.random() < 0.6 else facts)
        question, answer = _ask(rng, fact)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return render_chat(messages)


# --- evaluation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FactQuestion:
    fact: Fact
    held_out: bool  # asked in a held-out phrasing
    messages: tuple[dict, ...]  # the conversation so far, ending with the question


def fact_questions() -> list[FactQuestion]:
    """Every fact asked once in a training phrasing and once in a held-out one, each kind's phrasings
    taken in turn over its facts; every second fact as the second turn of a chat that first asked
    (and answered) another fact about the same subject."""
    out = []
    for i, fact in enumerate(FACTS):
        kind = KINDS[fact.kind]
        j = FACTS_BY_KIND[fact.kind].index(fact)  # which phrasing: turn by turn within the kind
        context: tuple[dict, ...] = ()
        if i % 2:
            siblings = _BY_SUBJECT[fact.subject]
            earlier = siblings[(siblings.index(fact) + 1) % len(siblings)]
            context = ({"role": "user", "content": earlier.question(KINDS[earlier.kind].questions[0])},
                       {"role": "assistant", "content": earlier.answers[0]})
        for held_out, phrasings in ((False, kind.questions), (True, kind.held_out)):
            question = fact.question(phrasings[j % len(phrasings)])
            out.append(FactQuestion(fact, held_out, context + ({"role": "user", "content": question},)))
    return out


def chance_accuracy(questions: list[FactQuestion]) -> float:
    """What naming one value of the right kind at random would score."""
    return sum(1 / (1 + len(q.fact.wrong)) for q in questions) / len(questions)
