"""The corpus: documents to train on, where they come from, and how they become a token stream.

Two sources. The built-in corpus is generated here, deterministically and offline: short stories
and ChatML conversations about one small, consistent world (the towns of the Amber Coast, a fixed
cast of twelve people with their homes, jobs, pets and habits), so that a model of a few million
parameters has something learnable to learn and its chat answers can be checked against the world.
User data is read from a `.txt` file, a `.jsonl` file, or a directory of them.

Around that: a deterministic train/validation split by document, writing a corpus to one text
file (which reads back as the same documents), simple statistics, and the token stream training
consumes (each document's ids followed by <|endoftext|>).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tinyllm.chat import END_OF_TEXT, IM_START, render_chat
from tinyllm.errors import TinyLLMError
from tinyllm.fileio import atomic_write

BUILTIN_DEFAULT_SIZE = 3_000_000  # characters, "a few MB"

# ---------------------------------------------------------------------------------------------
# The world. Everything a document says about a person or a place comes from these tables, so no
# two documents can disagree (Mira always lives in Saltmere and keeps a grey cat called Pebble).
# ---------------------------------------------------------------------------------------------

SEASONS = ("spring", "summer", "autumn", "winter")
DAY_TIMES = ("morning", "afternoon", "evening")  # "night" only where a topic asks for it
# Weather words that would contradict a night-time scene.
_DAYLIGHT_WEATHER = {"sunny", "bright", "blazing", "golden", "dusty", "hot"}


@dataclass(frozen=True)
class Place:
    name: str
    kind: str  # "harbour town", ...
    xy: tuple[int, int]  # map position, x east and y north, so directions between towns agree
    climate: dict[str, tuple[tuple[str, ...], str]]  # season -> (weather words, description)


PLACES = {
    "saltmere": Place("Saltmere", "harbour town", (0, 0), {
        "spring": (("fresh", "breezy", "bright"), "fresh and breezy, with showers and sunny spells"),
        "summer": (("warm", "sunny", "breezy"), "warm and sunny, with a cool wind off the sea"),
        "autumn": (("stormy", "blustery", "wet"), "stormy, with high waves crashing on the harbour wall"),
        "winter": (("wet", "windy", "grey"), "wet and windy, with cold rain blowing in from the sea"),
    }),
    "mirelle": Place("Mirelle", "river town", (2, 1), {
        "spring": (("rainy", "mild", "fresh"), "mild and rainy, and the river runs high"),
        "summer": (("warm", "sunny", "still"), "warm and still, with long lazy days by the river"),
        "autumn": (("misty", "cool", "golden"), "cool and misty, with golden leaves on the water"),
        "winter": (("foggy", "cold", "grey"), "cold and foggy, with mist lying on the river"),
    }),
    "sao_lirio": Place("São Lírio", "market city", (4, 1), {
        "spring": (("warm", "pleasant", "sunny"), "warm and pleasant, with flowers on every balcony"),
        "summer": (("hot", "sunny", "dusty"), "hot and dusty, and the streets are full of travellers"),
        "autumn": (("mild", "golden", "calm"), "mild and calm, with golden evenings"),
        "winter": (("cool", "cloudy", "damp"), "cool and cloudy, but it hardly ever snows"),
    }),
    "asbury": Place("Åsbury", "hill village", (5, 4), {
        "spring": (("cool", "bright", "showery"),
                   "cool and bright, with the last snow melting on the hilltops"),
        "summer": (("mild", "clear", "breezy"), "mild and clear, and never very hot"),
        "autumn": (("misty", "chilly", "damp"), "misty and chilly, with the first frosts"),
        "winter": (("snowy", "frosty", "icy"), "snowy and bitterly cold, with deep drifts on the hills"),
    }),
    "ostrow": Place("Ostrów Mały", "forest village", (1, 4), {
        "spring": (("damp", "green", "fresh"), "damp and green, with birdsong in every tree"),
        "summer": (("warm", "shady", "humid"), "warm, but shady and cool under the trees"),
        "autumn": (("foggy", "damp", "golden"), "foggy and damp, with mushrooms everywhere"),
        "winter": (("snowy", "still", "freezing"), "snowy and very still, with the pines heavy with snow"),
    }),
    "fernhollow": Place("Fernhollow", "farming valley", (0, -2), {
        "spring": (("mild", "showery", "green"), "mild and showery — just right for young crops"),
        "summer": (("hot", "sunny", "dry"), "hot and sunny, with dry dusty lanes"),
        "autumn": (("golden", "mild", "windy"), "mild and golden, the best weather for the harvest"),
        "winter": (("frosty", "cold", "clear"), "cold and frosty, with clear still mornings"),
    }),
    "cote": Place("Côte-Brûlée", "sunny southern town", (1, -5), {
        "spring": (("warm", "bright", "dry"), "warm, bright and dry"),
        "summer": (("hot", "dry", "blazing"), "very hot and dry, with long blazing days"),
        "autumn": (("warm", "calm", "golden"), "warm and calm, like a second summer"),
        "winter": (("mild", "sunny", "cool"), "mild and sunny — it almost never snows there"),
    }),
}
# The coast railway, end to end; Ostrów Mały has no station.
RAILWAY = ("cote", "fernhollow", "saltmere", "mirelle", "sao_lirio", "asbury")


@dataclass(frozen=True)
class Pet:
    kind: str
    colour: str
    name: str
    habits: tuple[str, ...]  # what it is doing while its owner is busy at home


@dataclass(frozen=True)
class Character:
    name: str
    he: str  # "she" or "he"
    home: str  # key of PLACES
    job: str
    work: str  # what the job involves, as a present-tense verb phrase
    pet: Pet
    food: str  # favourite
    thing: str  # favourite object, without article
    temperament: str
    manner: tuple[str, ...]  # how the temperament shows, past tense


CHARACTERS = (
    Character("Mira", "she", "saltmere", "fisher", "rows out every morning to catch fish",
              Pet("cat", "grey", "Pebble",
                  ("watched from a warm window sill", "curled up by the stove and purred")),
              "fish soup", "blue knitted hat", "cheerful",
              ("whistled a happy tune the whole time", "smiled at everyone she met")),
    Character("Søren", "he", "saltmere", "lighthouse keeper", "keeps the lighthouse lamp burning every night",
              Pet("parrot", "green", "Admiral",
                  ("squawked from its perch by the door", "said the same three words over and over")),
              "toast and marmalade", "brass telescope", "calm",
              ("never hurried, not even once", "worked slowly and steadily")),
    Character("Zoë", "she", "asbury", "teacher", "teaches the children at the village school",
              Pet("rabbit", "white", "Snowdrop", ("nibbled a carrot in its hutch", "hopped about the garden")),
              "apple pie", "red scarf", "kind",
              ("made sure everyone had what they needed", "shared her snacks with anyone nearby")),
    Character("José", "he", "sao_lirio", "baker", "bakes bread for the whole city before dawn",
              Pet("dog", "golden", "Churro", ("wagged its tail and barked once", "slept by the warm oven")),
              "honey cake", "wooden spoon", "jolly",
              ("laughed loudly at his own jokes", "told funny stories to anyone who would listen")),
    Character("Łucja", "she", "ostrow", "carpenter", "makes tables, chairs and boxes out of wood",
              Pet("tortoise", "brown", "Bolek", ("crept slowly across the yard", "dozed under a cabbage leaf")),
              "plum dumplings", "folding ruler", "shy",
              ("said very little, but smiled often", "kept quietly to herself")),
    Character("Ngozi", "she", "mirelle", "doctor", "looks after people when they are ill",
              Pet("canary", "yellow", "Sunny", ("sang in its little cage", "hopped from perch to perch")),
              "jollof rice", "green umbrella", "patient",
              ("explained everything twice, slowly", "listened carefully to everyone")),
    Character("Ana-Maria", "she", "cote", "musician", "plays her fiddle at weddings and festivals",
              Pet("duck", "white", "Blossom",
                  ("waddled about the yard, quacking", "splashed in a bucket of water")),
              "fresh figs", "old fiddle", "lively",
              ("sang and danced between jobs", "could not keep still for a minute")),
    Character("François", "he", "mirelle", "train driver", "drives the train along the coast line",
              Pet("goldfish", "orange", "Monsieur Bulle",
                  ("swam slow circles in its bowl", "blew tiny bubbles at the glass")),
              "onion soup", "silver pocket watch", "serious",
              ("checked everything twice", "frowned a little, though he was kind underneath")),
    Character("Tomas", "he", "fernhollow", "gardener", "looks after the gardens and orchards of the valley",
              Pet("pony", "chestnut", "Hazel", ("grazed in the paddock", "whinnied over the gate")),
              "new potatoes with butter", "green watering can", "gentle",
              ("spoke softly and never rushed", "moved carefully so that nothing got hurt")),
    Character("Priya", "she", "sao_lirio", "postwoman", "delivers letters and parcels all over the city",
              Pet("hen", "red", "Dot", ("pecked about the yard", "laid a brown egg in the straw")),
              "mango chutney with rice", "leather satchel", "chatty",
              ("talked to everyone she met", "had a bit of news for every neighbour")),
    Character("Oskar", "he", "asbury", "shepherd", "looks after a big flock of sheep on the hills",
              Pet("goat", "black", "Nettle", ("chewed on a bit of old rope", "climbed onto the woodpile")),
              "goat's cheese on bread", "carved walking stick", "quiet",
              ("hardly said a word all day", "hummed quietly to himself")),
    Character("Hana", "she", "mirelle", "map maker", "draws maps of the rivers, roads and hills",
              Pet("hedgehog", "brown", "Prickles",
                  ("snuffled about under the hedge", "slept curled up in a ball")),
              "mushroom pie", "box of coloured pencils", "careful",
              ("measured everything twice", "wrote neat notes about everything")),
)
PEOPLE = {c.name: c for c in CHARACTERS}
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}

# ---------------------------------------------------------------------------------------------
# Topics. Each topic carries what both kinds of document need: activities for stories (with
# {placeholders} filled from the hero), terms to define, a how-to, things people say, and
# optionally topic-specific questions (`extras`) whose answers are computed from the world.
# ---------------------------------------------------------------------------------------------

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


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _direction(src: str, dst: str) -> str:
    (x0, y0), (x1, y1) = PLACES[src].xy, PLACES[dst].xy
    compass = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
    return compass[round(math.degrees(math.atan2(y1 - y0, x1 - x0)) / 45) % 8]


def _nearest_station(place: str) -> str:
    return min(RAILWAY, key=lambda station: math.dist(PLACES[station].xy, PLACES[place].xy))


# --- topic-specific questions; every answer is derived from the tables above -------------------

def _ask_weather(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    place = PLACES[rng.choice(list(PLACES))]
    if rng.random() < 0.25:
        snowy = [s for s in SEASONS if "snowy" in place.climate[s][0]]
        if snowy:
            return (f"Does it snow in {place.name}?",
                    f"Yes. In {snowy[0]}, the weather in {place.name} is {place.climate[snowy[0]][1]}.")
        return (f"Does it snow in {place.name}?",
                f"Hardly ever. Even in winter, the weather in {place.name} is {place.climate['winter'][1]}.")
    season = rng.choice(SEASONS)
    question = rng.choice(("What is the weather like in {p} in {s}?", "How is the weather in {p} during {s}?",
                           "I'm visiting {p} in {s}. What weather should I expect?"))
    return (question.format(p=place.name, s=season),
            f"In {season}, the weather in {place.name} is usually {place.climate[season][1]}.")


def _ask_season(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    i = rng.randrange(4)
    season, after, before = SEASONS[i], SEASONS[(i + 1) % 4], SEASONS[i - 1]
    kind = rng.randrange(3)
    if kind == 0:
        return f"What season comes after {season}?", f"After {season} comes {after}."
    if kind == 1:
        return f"Which season comes before {season}?", f"{_cap(before)} comes before {season}."
    place = PLACES[rng.choice(list(PLACES))]
    return (f"What is {place.name} like in {season}?",
            f"In {season}, {place.name} is {place.climate[season][1]}.")


def _ask_price(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    prices = (("apples", 2), ("loaves of bread", 3), ("eggs", 1), ("jars of honey", 5), ("fish", 4))
    if rng.random() < 0.2:
        goods = _join([item for item, _ in prices])
        return ("What can I buy at the market in São Lírio?",
                f"At the market in São Lírio you can buy {goods}, and much more.")
    item, price = rng.choice(prices)
    n = rng.randint(2, 9)
    return (f"At the market in São Lírio, how much do {n} {item} cost?",
            f"{_cap(item)} cost {_plural(price, 'coin')} each at the market, so {n} {item} cost "
            f"{_plural(n * price, 'coin')}.")


def _ask_train(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    src, dst = rng.sample(list(PLACES), 2)
    a, b = PLACES[src].name, PLACES[dst].name
    if rng.random() < 0.25:
        if src in RAILWAY:
            return f"Is there a train station in {a}?", f"Yes — {a} is on the coast railway."
        return (f"Is there a train station in {a}?",
                f"No. The nearest station to {a} is {PLACES[_nearest_station(src)].name}.")
    question = f"How do I get from {a} to {b} by train?"
    if src not in RAILWAY or dst not in RAILWAY:
        off, on = (src, dst) if src not in RAILWAY else (dst, src)
        station = _nearest_station(off)
        if station == on:
            return question, (f"There is no train station in {PLACES[off].name}, so you go by road: "
                              f"{PLACES[dst].name} is {_direction(src, dst)} of {PLACES[src].name}.")
        return question, (f"There is no train station in {PLACES[off].name}. Take the train between "
                          f"{PLACES[on].name} and {PLACES[station].name}, and go the rest of the way by road.")
    i, j = RAILWAY.index(src), RAILWAY.index(dst)
    stops = RAILWAY[i + 1:j] if i < j else RAILWAY[j + 1:i][::-1]
    end = PLACES[RAILWAY[-1] if i < j else RAILWAY[0]].name
    if not stops:
        return question, f"Take the train towards {end}: {b} is the very next stop after {a}."
    return question, (f"Take the train from {a} towards {end}. It stops at "
                      f"{_join([PLACES[s].name for s in stops])}, and then at {b}.")


def _ask_direction(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    src, dst = rng.sample(list(PLACES), 2)
    question = rng.choice(("Which way is {b} from {a}?", "On the map, in which direction is {b} from {a}?",
                           "If I am in {a}, which way do I go to reach {b}?"))
    return (question.format(a=PLACES[src].name, b=PLACES[dst].name),
            f"{PLACES[dst].name} is {_direction(src, dst)} of {PLACES[src].name}.")


def _ask_count(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    owner, giver = rng.sample(CHARACTERS, 2)
    things = rng.choice(("apples", "eggs", "shells", "pebbles", "buttons", "stamps", "plums"))
    kind = rng.randrange(4)
    if kind == 0:
        n, m = rng.randint(2, 10), rng.randint(1, 10)
        him = _PRONOUNS[owner.he][1]
        return (f"{owner.name} has {n} {things}. {giver.name} gives {him} {m} more. "
                f"How many {things} does {owner.name} have now?",
                f"{owner.name} has {n + m} {things} now, because {n} + {m} = {n + m}.")
    if kind == 1:
        n = rng.randint(4, 15)
        m = rng.randint(1, n - 2)
        return (f"{owner.name} has {n} {things} and gives {m} to {giver.name}. "
                f"How many {things} does {owner.name} have left?",
                f"{owner.name} has {n - m} {things} left, because {n} - {m} = {n - m}.")
    if kind == 2:
        start = rng.randint(1, 10)
        stop = start + rng.randint(3, 8)
        return f"Count from {start} to {stop}.", ", ".join(str(k) for k in range(start, stop + 1)) + "."
    animal, legs = rng.choice((("hen", "two"), ("duck", "two"), ("dog", "four"), ("goat", "four"),
                               ("pony", "four"), ("spider", "eight"), ("beetle", "six")))
    return f"How many legs does {_a(animal)} have?", f"{_cap(_a(animal))} has {legs} legs."


def _ask_arithmetic(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    op = rng.choice(("+", "-", "×"))
    if op == "×":
        a, b = rng.randint(1, 10), rng.randint(1, 10)
        c = a * b
    else:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if op == "-":
            a, b = max(a, b), min(a, b)
        c = a + b if op == "+" else a - b
    if rng.random() < 0.5:
        question = rng.choice(("What is {a} {o} {b}?", "{a} {o} {b} = ?"))
        return question.format(a=a, o=op, b=b), f"{a} {op} {b} = {c}."
    word = {"+": "plus", "-": "minus", "×": "times"}[op]
    question = rng.choice(("What is {a} {w} {b}?", "Can you work out {a} {w} {b}?"))
    return question.format(a=a, w=word, b=b), f"{a} {word} {b} is {c}."


def _ask_colour(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b, mix = rng.choice((("blue", "yellow", "green"), ("red", "yellow", "orange"),
                                ("red", "blue", "purple"),
                                ("red", "white", "pink"), ("black", "white", "grey")))
        return f"What colour do you get if you mix {a} and {b}?", f"Mixing {a} and {b} gives {mix}."
    if kind == 1:
        thing, colour = rng.choice((("a ripe lemon", "yellow"), ("fresh grass", "green"),
                                    ("a clear sky", "blue"),
                                    ("fresh snow", "white"), ("a ripe tomato", "red"), ("coal", "black"),
                                    ("a ripe plum", "purple")))
        return f"What colour is {thing}?", f"{_cap(thing)} is {colour}."
    owner = rng.choice(CHARACTERS)
    pet = owner.pet
    return (f"What colour is {owner.name}'s {pet.kind}?",
            f"{owner.name}'s {pet.kind}, {pet.name}, is {pet.colour}.")


def _ask_shape(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.6:
        shape, sides = rng.choice((("triangle", 3), ("square", 4), ("pentagon", 5), ("hexagon", 6),
                                   ("octagon", 8), ("circle", 0)))
        if not sides:
            return ("How many sides does a circle have?",
                    "A circle has no straight sides — it is one smooth curve.")
        return f"How many sides does a {shape} have?", f"A {shape} has {sides} sides."
    thing, shape = rng.choice((("a coin", "a circle"), ("a cell of a honeycomb", "a hexagon"),
                               ("a slice of pie", "a triangle"), ("a chessboard square", "a square"),
                               ("a full moon", "a circle")))
    return f"What shape is {thing}?", f"{_cap(thing)} is shaped like {shape}."


def _ask_clock(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.2:
        return rng.choice((("How many minutes are there in an hour?", "There are sixty minutes in an hour."),
                           ("How many hours are there in a day?", "There are twenty-four hours in a day.")))
    h, k = rng.randint(1, 12), rng.randint(1, 11)
    if rng.random() < 0.5:
        return (f"It is {h} o'clock. What time will it be in {_plural(k, 'hour')}?",
                f"It will be {(h - 1 + k) % 12 + 1} o'clock.")
    return (f"It is {h} o'clock. What time was it {_plural(k, 'hour')} ago?",
            f"It was {(h - 1 - k) % 12 + 1} o'clock.")


_PET_CARE = {
    "cat": "give it fresh food and water every day, a warm place to sleep, and a scratching post",
    "parrot": "give it seeds and fruit, a big cage, and plenty of talk — parrots get lonely",
    "rabbit": "give it hay, fresh greens and water, a dry hutch, and room to hop about",
    "dog": "feed it twice a day, take it for long walks, and brush its coat",
    "tortoise": "keep it warm, give it leafy greens, and let it sleep through the winter",
    "canary": "give it seeds and fresh water, clean its cage, and keep it out of cold draughts",
    "duck": "give it grain, a pond or a big tub of water, and a safe shed at night",
    "goldfish": "keep its water clean, feed it a small pinch of food, and do not overfeed it",
    "pony": "give it grass and hay, fresh water, a field to run in, and brush it often",
    "hen": "give it grain and kitchen scraps, a safe coop at night, and fresh straw",
    "goat": "give it hay and water, a strong fence — goats love to escape — and something to climb",
    "hedgehog": "give it a quiet box to sleep in, some cat food, and a shallow dish of water — never milk",
}


def _ask_pet(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    owner = rng.choice(CHARACTERS)
    pet = owner.pet
    kind = rng.randrange(4)
    if kind == 0:
        return (f"What pet does {owner.name} have?",
                f"{owner.name} has {_a(pet.colour)} {pet.kind} called {pet.name}.")
    if kind == 1:
        return (f"What is the name of {owner.name}'s {pet.kind}?",
                f"{owner.name}'s {pet.kind} is called {pet.name}.")
    if kind == 2:
        other = rng.choice([c.pet.kind for c in CHARACTERS if c.pet.kind != pet.kind])
        return (f"Does {owner.name} have {_a(other)}?",
                f"No — {owner.name} has {_a(pet.colour)} {pet.kind} called {pet.name}, not {_a(other)}.")
    return f"How do I look after {_a(pet.kind)}?", f"To look after {_a(pet.kind)}, {_PET_CARE[pet.kind]}."


_FRIEND_TIPS = (
    ("How can I make a new friend?",
     "Say hello, ask them about something they like, and listen to the answer. Friendship grows slowly."),
    ("What makes a good friend?",
     "A good friend listens, keeps promises, says sorry when they are wrong, and is kind when you are sad."),
    ("I had a quarrel with my friend. What should I do?",
     "Wait until you both feel calm, then talk. Say sorry for your part, and listen to your friend's side."),
)


def _ask_friend(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.3:
        return rng.choice(_FRIEND_TIPS)
    person = rng.choice(CHARACTERS)
    he = _PRONOUNS[person.he][0]
    return (f"What is {person.name} like as a friend?",
            f"{person.name} is {person.temperament} — {he} {rng.choice(person.manner)}. "
            f"{_cap(he)} is a good friend to everyone in {PLACES[person.home].name}.")


_FEELINGS = {
    "sad": ("It is all right to feel sad. Talk to someone you trust, go for a short walk, and be gentle with "
            "yourself.", "Sit with them, let them talk about how they feel, and do not rush them to cheer up."),
    "lonely": ("When you feel lonely, write to an old friend, visit a neighbour, or join a club or a choir.",
               "Invite them along to something, or just call by for a cup of tea. Feeling included helps."),
    "nervous": ("Take slow, deep breaths, get ready early, and remember that most people feel nervous before "
                "something new.", "Tell them it is normal to feel nervous, and help them practise."),
    "angry": ("Step away for a moment, breathe slowly, and wait until you feel calm before you speak.",
              "Give them a little space, then listen. Do not argue while they still feel angry."),
    "tired": ("Go to bed a little earlier, drink water, and take short rests. If you feel tired for weeks, see a "
              "doctor.", "Help with a job or two, so they can rest. Everyone can feel tired sometimes."),
    "worried": ("Write down what worries you, and next to it one small thing you can do about it. Then do that "
                "one thing.", "Ask them what they feel worried about, and help them make a small plan."),
    "bored": ("Try something new: read a book, learn a song, draw a map of your street, or help a neighbour.",
              "Suggest a walk or a game together. Feeling bored often means it is time to try something new."),
    "homesick": ("Write a letter home, keep a photo nearby, and make one new friend where you are. The feeling "
                 "fades.", "Ask them about home and let them talk. Then show them something nice where they are."),
}


def _ask_feeling(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    feeling, (own, friend) = rng.choice(list(_FEELINGS.items()))
    if rng.random() < 0.6:
        question = rng.choice(("I feel {f}. What should I do?", "What can I do when I feel {f}?"))
        return question.format(f=feeling), own
    return f"My friend feels {feeling}. How can I help?", friend


def _ask_food(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    person = rng.choice(CHARACTERS)
    if rng.random() < 0.5:
        return f"What is {person.name}'s favourite food?", f"{person.name}'s favourite food is {person.food}."
    him = _PRONOUNS[person.he][1]
    return (f"What should I cook for {person.name}?",
            f"Cook {person.food} — it is {person.name}'s favourite food, and it would make {him} very happy.")


def _ask_home(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.6:
        person = rng.choice(CHARACTERS)
        place = PLACES[person.home]
        return f"Where does {person.name} live?", f"{person.name} lives in {place.name}, the {place.kind}."
    key = rng.choice(list(PLACES))
    people = [c.name for c in CHARACTERS if c.home == key]
    verb = "lives" if len(people) == 1 else "live"
    return f"Who lives in {PLACES[key].name}?", f"{_join(people)} {verb} in {PLACES[key].name}."


def _ask_job(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    person = rng.choice(CHARACTERS)
    place = PLACES[person.home].name
    if rng.random() < 0.7:
        question = rng.choice(("What does {n} do?", "What is {n}'s job?", "What work does {n} do?"))
        he = _PRONOUNS[person.he][0]
        return (question.format(n=person.name),
                f"{person.name} works as {_a(person.job)} in {place}: {he} {person.work}.")
    his = _PRONOUNS[person.he][2]
    return (f"Who is the {person.job} in {place}?",
            f"{person.name} is the {person.job} in {place}; that is {his} job.")


TOPICS = (
    Topic("fishing", ("fish", "net", "boat"),
          ("mended the torn nets on the quay", "rowed the little boat out past the harbour wall to fish",
           "sorted the morning's catch of fish into baskets", "hung the wet nets up to dry",
           "cast a fishing line off the end of the pier"),
          (("a net", "a mesh of knotted rope that catches fish but lets the water run through"),
           ("a quay", "a stone platform beside the water where boats tie up and unload their fish")),
          ("mend a fishing net", ("find the torn part of the net",
                                  "tie new twine across the hole with small, tight knots",
                                  "trim the loose ends", "hang the net up to dry")),
          ("The fish are biting today!", "Mind the tide — it turns quickly here.", "Nets first, breakfast after."),
          expert="Mira", places=("saltmere",)),
    Topic("sailing", ("sail", "boat", "mast", "rope"),
          ("hoisted the sail and caught the wind", "coiled the ropes neatly on the deck of the boat",
           "steered the little boat around the rocks", "tied the boat up with a strong knot",
           "checked the mast of the boat for cracks"),
          (("a mast", "the tall pole on a boat that holds up the sail"),
           ("a rudder", "the flat board at the back of a boat that you turn to steer it")),
          ("tie a boat to a post", ("pass the rope around the post", "cross the end over itself",
                                    "tuck it under and pull it tight", "leave a little slack for the tide")),
          ("The wind is just right for sailing.", "Keep the sail tight and your eyes on the rocks."),
          expert="Søren", places=("saltmere",)),
    Topic("the lighthouse", ("lighthouse", "lamp"),
          ("climbed the hundred and twelve steps of the lighthouse",
           "polished the great lamp at the top of the lighthouse",
           "wrote the passing ships in the lighthouse logbook", "trimmed the wick of the lighthouse lamp",
           "painted the lighthouse door a fresh white"),
          (("a lighthouse",
            "a tall tower by the sea with a bright lamp at the top that warns ships away from the rocks"),
           ("a logbook", "a book where a lighthouse keeper writes down the weather and the ships that pass")),
          ("clean a big lamp", ("let the lamp cool down first", "wipe the glass with a soft dry cloth",
                                "polish the brass with a little oil", "check the wick before dark")),
          ("The light must never go out.", "Ships are counting on us tonight."),
          expert="Søren", places=("saltmere",)),
    Topic("the beach", ("beach", "sand", "shell", "wave", "tide"),
          ("collected shells along the beach", "built a sandcastle near the water",
           "watched the waves roll up the sand", "walked along the beach as the tide went out"),
          (("a tide", "the rise and fall of the sea, twice every day"),
           ("a sandcastle", "a little castle built from wet sand on a beach")),
          ("build a good sandcastle", ("find sand that is damp but not soaking", "pack it tightly into a bucket",
                                       "turn the bucket over quickly", "dig a moat around it, away from the waves")),
          ("Look at this shell — it's perfect!", "The tide is coming in… time to move back."),
          places=("saltmere", "cote"), seasons=("spring", "summer", "autumn")),
    Topic("storms", ("storm",),
          ("closed the shutters before the storm arrived", "watched the storm waves crash over the harbour wall",
           "tied down everything loose before the storm", "listened to the storm howling down the chimney"),
          (("a storm", "very strong wind, often with heavy rain, thunder or big waves"),
           ("thunder", "the loud rumbling noise that comes after lightning in a storm")),
          ("get ready for a storm", ("close and fasten the shutters", "bring in anything the wind could blow away",
                                     "put candles and matches where you can find them",
                                     "stay indoors until the storm has passed")),
          ("That storm is coming in fast!", "Nobody goes out on the water today."),
          places=("saltmere",), seasons=("autumn", "winter"), weather=("stormy", "wild", "windy")),
    Topic("weather", ("weather", "rain", "wind", "cloud", "barometer", "sky", "snow"),
          ("looked up at the clouds to guess the weather", "tapped the old barometer in the hall",
           "wrote the day's weather in a little notebook", "hung a striped wind sock on the garden fence",
           "watched the clouds roll across the sky"),
          (("a barometer", "an instrument that measures air pressure; when it falls, rain is often on the way"),
           ("fog", "a cloud that sits low on the ground, so you cannot see very far")),
          ("guess tomorrow's weather", ("look at the clouds in the evening", "notice which way the wind blows",
                                        "check whether the barometer is rising or falling",
                                        "remember that a red sky at night often means a fine day")),
          ("Looks like rain by the afternoon.", "Red sky at night — a fine day in sight!",
           "The wind has turned; the weather will change."),
          expert="Søren", extras=(_ask_weather,)),
    Topic("seasons", ("season", "spring", "summer", "autumn", "winter"),
          ("noticed how {season} was changing the trees", "wrote a little poem about {season}",
           "made a chart of the four seasons", "planned what to plant next season"),
          (("a season", "one of the four parts of the year: spring, summer, autumn and winter"),
           ("an equinox",
            "one of the two days a year, in spring and autumn, when day and night are the same length")),
          ("get a garden ready for winter", ("clear away the dead leaves", "dig in some compost",
                                             "cover tender plants with straw", "put the tools away clean and dry")),
          ("Every season has something to love.", "I can smell the season changing."),
          extras=(_ask_season,)),
    Topic("rain", ("rain", "puddle", "umbrella", "wet"),
          ("splashed through the puddles in big boots", "put out buckets to catch the rain",
           "hurried home under a dripping umbrella", "watched the rain run down the window"),
          (("a puddle", "a small pool of rainwater on the ground"),
           ("drizzle", "very light rain made of tiny drops")),
          ("stay dry in the rain", ("wear a coat with a hood", "take an umbrella",
                                    "put on boots", "walk around the deepest puddles")),
          ("Just listen to that rain!", "Well… we won't need to water the garden today."),
          places=("saltmere", "mirelle"), seasons=("spring", "autumn", "winter"),
          weather=("rainy", "wet", "drizzly")),
    Topic("snow", ("snow", "sledge"),
          ("built a snowman with a carrot nose", "pulled a wooden sledge up the hill in the snow",
           "cleared the snow from the front path", "made a trail of footprints in the fresh snow"),
          (("a sledge", "a low wooden seat on runners for sliding down snowy hills"),
           ("a snowdrift", "a deep bank of snow piled up by the wind")),
          ("build a snowman", ("roll a big ball of snow for the body", "roll a smaller one for the head",
                               "lift the head on top", "add two stones for eyes and a carrot for the nose")),
          ("Snow at last!", "Mind the ice — it's slippery by the gate."),
          places=("asbury", "ostrow"), seasons=("winter",)),
    Topic("gardening", ("garden", "seed", "weed", "plant", "soil", "compost"),
          ("planted a row of bean seeds", "pulled the weeds from between the carrots",
           "watered the young plants along the garden path", "dug rich compost into the soil",
           "tied the tall tomato plants to sticks"),
          (("compost", "old leaves and kitchen scraps that rot down into rich food for the soil"),
           ("a seedling", "a very young plant that has just grown from a seed")),
          ("plant seeds", ("rake the soil until it is fine and crumbly", "make a shallow line with a stick",
                           "drop the seeds in, a finger apart", "cover them lightly and water them gently")),
          ("Weeds grow faster than anything!", "A little water every day, that's the secret."),
          expert="Tomas", seasons=("spring", "summer", "autumn")),
    Topic("the orchard", ("apple", "pear", "plum", "orchard", "fruit", "tree"),
          ("picked ripe apples from the orchard trees", "climbed a ladder to reach the highest pears",
           "gathered fallen plums into a basket", "pruned the old apple tree by the orchard wall"),
          (("an orchard", "a field of fruit trees, such as apples, pears and plums"),
           ("pruning", "cutting off some branches of a tree so that it grows strong and gives more fruit")),
          ("pick an apple", ("hold the apple in your palm", "lift it up gently and give it a little twist",
                             "if it comes away easily, it is ripe", "lay it in the basket — do not drop it")),
          ("These apples are sweeter than last year's.", "Careful on that ladder!"),
          expert="Tomas", places=("fernhollow",), seasons=("summer", "autumn")),
    Topic("farming", ("farm", "field", "cow", "hay", "barn", "pig"),
          ("milked the cows before breakfast", "stacked bales of hay in the barn",
           "mended the gate of the cow field", "fed the pigs on the farm",
           "drove the cart along the edge of the field"),
          (("a barn", "a big farm building for keeping hay, tools and animals"),
           ("hay", "grass that has been cut and dried to feed farm animals in winter")),
          ("milk a cow", ("wash your hands and the cow's udder", "sit on a low stool beside her",
                          "squeeze gently from the top of the teat down", "keep the bucket steady")),
          ("There's always work on a farm.", "The cows know exactly when it's milking time."),
          places=("fernhollow",)),
    Topic("bees", ("bee", "hive", "honey"),
          ("lifted the lid of the beehive very gently", "watched the bees busy among the lavender",
           "spun golden honey from the combs", "put on a veil and gloves before visiting the hives"),
          (("a hive", "a box or nest where a colony of bees lives and stores its honey"),
           ("a honeycomb", "the wax cells, each with six sides, where bees keep honey")),
          ("check a beehive safely", ("wear a veil and gloves", "move slowly and calmly",
                                      "puff a little smoke at the entrance",
                                      "lift the lid gently and close it soon")),
          ("Move slowly — bees don't like a fuss.", "This honey tastes of summer."),
          places=("fernhollow", "cote"), seasons=("spring", "summer")),
    Topic("sheep", ("sheep", "lamb", "flock", "wool", "fleece"),
          ("counted the sheep as they came through the gate", "carried a lost lamb back to the flock",
           "sheared the thick wool from an old ewe", "whistled to bring the flock down from the hill"),
          (("a flock", "a group of sheep that live and move together"),
           ("a fleece", "the whole woolly coat of a sheep, cut off in one piece")),
          ("bring sheep through a gate", ("open the gate wide", "walk slowly behind the flock",
                                          "let the first sheep find the way — the rest follow",
                                          "count them as they pass")),
          ("One, two, three… there's always one missing!", "The lambs are growing fast this year."),
          expert="Oskar", places=("asbury",)),
    Topic("cheese-making", ("cheese", "milk", "curd"),
          ("warmed a big pan of fresh milk", "stirred the curds until they were firm",
           "pressed the cheese into a round wooden mould", "turned the cheeses on the cellar shelf"),
          (("curd", "the thick soft part of milk that forms when it turns sour; cheese is made from it"),
           ("whey", "the thin watery liquid left behind when curds form in milk")),
          ("make a soft cheese", ("warm the milk gently", "stir in a little lemon juice",
                                  "wait for the curds to form",
                                  "strain them through a cloth and add a pinch of salt")),
          ("Good cheese needs patience.", "Taste this one — it has been waiting all winter."),
          places=("asbury", "fernhollow")),
    Topic("cooking", ("cook", "soup", "stew", "kitchen", "onion"),
          ("chopped onions for a big pot of soup", "stirred the stew slowly on the stove",
           "set the kitchen table for supper", "tasted the soup and added a pinch of salt",
           "cooked {food} for a friend"),
          (("a ladle", "a big deep spoon with a long handle for serving soup"),
           ("a stew", "meat or vegetables cooked slowly in liquid in a covered pot")),
          ("make vegetable soup", ("chop an onion, two carrots and a potato", "soften the onion in a little butter",
                                   "add the other vegetables and cover them with water",
                                   "simmer until soft, then add salt")),
          ("Something smells good in here!", "A soup is never rushed."),
          ),
    Topic("baking", ("bread", "baking", "bake", "oven", "dough", "flour", "loaves", "rolls"),
          ("kneaded the bread dough on the floured table", "lit the big bread oven",
           "shaped the dough into round loaves", "pulled a tray of golden rolls from the oven",
           "sifted flour into a wide bowl"),
          (("yeast", "a tiny living thing that makes bread dough rise"),
           ("dough", "a thick mixture of flour and water, ready to be shaped and baked")),
          ("bake bread", ("mix flour, water, salt and yeast", "knead the dough for ten minutes",
                          "leave it somewhere warm to rise", "shape it into a loaf and bake it in a hot oven")),
          ("Nothing smells better than fresh bread.", "Don't open the oven yet!"),
          expert="José"),
    Topic("favourite foods", ("food", "eat", "ate", "supper", "cook", "taste", "dish"),
          ("ate a big plate of {food}", "shared {his} favourite food, {food}, with a neighbour",
           "tasted a new dish at the inn", "thought about what to eat for supper"),
          (("a recipe", "a list of what you need and the steps to cook a dish"),
           ("a snack", "a little bit of food eaten between meals")),
          ("eat well", ("eat plenty of fruit and vegetables", "drink water through the day",
                        "sit down to eat slowly", "share a meal with friends when you can")),
          ("This is my favourite food in the world.", "Who wants a second helping?"),
          extras=(_ask_food,)),
    Topic("tea", ("tea", "kettle", "cup", "teapot"),
          ("put the kettle on for a pot of tea", "poured tea into two blue cups",
           "sat by the window with a cup of mint tea", "washed up the teapot and the cups"),
          (("a kettle", "a pot with a spout and a handle for boiling water"),
           ("a teapot", "a pot with a spout where tea leaves soak in hot water")),
          ("make a pot of tea", ("boil fresh water in the kettle", "warm the teapot with a splash of hot water",
                                 "add a spoonful of tea for each person",
                                 "pour on the water and wait four minutes")),
          ("Tea first, then we talk.", "Milk in first or last? We'll never agree."),
          ),
    Topic("the market", ("market", "stall", "coin"),
          ("set up a stall in the market square", "bought a basket of apples at the market",
           "counted the coins after a busy market day", "sold jars of jam from a little market stall",
           "asked the price of a woollen rug at the market"),
          (("a stall", "a table or small stand where things are sold at a market"),
           ("a coin", "a small flat round piece of metal used as money")),
          ("shop at a busy market", ("make a list before you go", "walk all the way round first",
                                     "compare the prices at different stalls", "keep your coins in a safe pocket")),
          ("Fresh plums, three for a coin!", "Come early — the best things go first."),
          places=("sao_lirio",), extras=(_ask_price,)),
    Topic("music", ("music", "song", "tune", "fiddle", "drum", "sang"),
          ("practised a new tune on the fiddle", "sang a song while working", "taught the children a new song",
           "tapped a drum to keep the beat for the dancers", "listened to music in the square"),
          (("a fiddle", "another name for a violin, played with a bow"),
           ("a rhythm", "the pattern of long and short beats in a piece of music")),
          ("learn a new tune", ("listen to it several times", "hum it until you know it by heart",
                                "play it slowly, one short part at a time", "speed up only when it sounds right")),
          ("Again, from the top!", "Music makes any day better."),
          expert="Ana-Maria"),
    Topic("festivals", ("festival", "parade", "lantern"),
          ("hung paper lanterns for the festival", "marched in the festival parade",
           "helped build a bonfire for the festival", "danced in the square at the festival",
           "baked sweet buns for the festival stall"),
          (("a festival", "a day or a few days when a whole town celebrates together"),
           ("a parade", "a line of people marching or dancing through the streets, often with music")),
          ("make a paper lantern", ("fold a sheet of coloured paper in half", "cut slits along the fold",
                                    "open it out and roll it into a tube", "glue the ends and add a paper handle")),
          ("The whole town is here!", "Save me a sweet bun — the festival is only once a year!"),
          ),
    Topic("birthdays", ("birthday", "present"),
          ("wrapped a birthday present in bright paper", "baked a birthday cake with seven candles",
           "sang happy birthday with all the neighbours", "wrote a birthday card for a friend"),
          (("a birthday", "the day each year when you remember the day you were born"),
           ("a present", "something you give to someone to make them happy, often wrapped in paper")),
          ("plan a birthday party", ("choose a day and invite friends", "bake or buy a cake",
                                     "plan one or two simple games", "do not forget the candles")),
          ("Happy birthday!", "Make a wish before you blow out the candles."),
          ),
    Topic("games", ("game", "play", "cards", "ball"),
          ("played a game of cards by the fire", "kicked a ball about in the lane",
           "played hide-and-seek with the children", "taught a friend a new board game"),
          (("hide-and-seek", "a game where one person counts while the others hide, then tries to find them"),
           ("a board game", "a game played by moving pieces on a printed board")),
          ("play hide-and-seek", ("choose who will count", "they close their eyes and count to twenty",
                                  "everyone else hides quietly", "the counter looks until everyone is found")),
          ("Your turn!", "One more game — just one!"),
          ),
    Topic("school", ("school", "lesson", "class", "blackboard"),
          ("rang the school bell", "wrote the day's lesson on the blackboard", "read a story aloud to the class",
           "helped the children with their spelling at school", "tidied the classroom after the lessons"),
          (("a blackboard", "a big dark board at the front of a classroom that you write on with chalk"),
           ("a lesson", "a time when a teacher helps a class learn one thing")),
          ("learn spellings for school", ("look at the word carefully", "say it out loud",
                                          "cover it and write it down", "check it, and try again if it is wrong")),
          ("Books away, everyone.", "Who can tell me the answer?"),
          expert="Zoë", places=("asbury",)),
    Topic("books", ("book", "read", "library", "page", "story"),
          ("borrowed three books from the library", "read a long book by the fire",
           "mended the torn page of an old book", "read a story aloud to a friend"),
          (("a library", "a place where you can borrow books for free and bring them back later"),
           ("a chapter", "one of the parts a long book is divided into")),
          ("look after a book", ("keep it dry", "use a bookmark instead of folding the pages",
                                 "turn the pages gently", "put it back on the shelf when you finish")),
          ("Just one more chapter…", "This book is even better than the last one."),
          ),
    Topic("letters", ("letter", "post", "envelope", "stamp", "parcel"),
          ("sorted the morning letters into bundles", "carried a heavy parcel across town",
           "wrote a long letter to an old friend", "stuck a stamp on the envelope",
           "posted a letter in the red post box"),
          (("an envelope", "a folded paper cover that a letter goes in"),
           ("a stamp", "a small sticky picture you put on a letter to pay for the post")),
          ("send a letter", ("write the letter and fold it", "put it in an envelope and seal it",
                             "write the address on the front", "stick on a stamp and post it")),
          ("A letter for you!", "This parcel weighs as much as a goat!"),
          expert="Priya"),
    Topic("trains", ("train", "station", "platform", "railway", "ticket"),
          ("oiled the wheels of the little train", "checked the tickets on the platform",
           "waved as the train pulled out of the station", "waited on the platform for the next train",
           "polished the brass bell of the train"),
          (("a platform", "the raised path beside the railway where you get on and off a train"),
           ("a timetable", "a list of the times when trains arrive and leave")),
          ("catch a train", ("check the timetable", "buy a ticket at the station",
                             "wait on the right platform", "get on quickly when the doors open")),
          ("All aboard!", "We leave at ten o'clock sharp — not a minute later."),
          expert="François", places=RAILWAY, extras=(_ask_train,)),
    Topic("maps", ("map", "north", "south", "east", "west", "compass"),
          ("drew a new map of the river bend", "unfolded a big map on the kitchen table",
           "checked the compass and turned north", "marked the footpaths on the map in red ink",
           "measured the distance between two towns on the map"),
          (("a compass", "a small instrument with a needle that always points north"),
           ("a map", "a drawing of a place as seen from above, showing roads, rivers and towns")),
          ("read a map", ("find north — it is usually at the top", "find where you are",
                          "find where you want to go", "follow the roads or paths between the two")),
          ("We're here, and we need to be there.", "North is always at the top of my maps."),
          expert="Hana", extras=(_ask_direction,)),
    Topic("counting", ("count", "how many", "number"),
          ("counted the stairs up to the attic", "taught a child to count to twenty",
           "counted the coins in a jar", "wrote the numbers from one to ten on a slate"),
          (("a number", "a word or sign that tells how many, like 3 or seven"),
           ("zero", "the number that means none at all")),
          ("count a big pile of things", ("move each thing as you count it", "make groups of ten",
                                          "count the groups", "add on the ones left over")),
          ("One, two, three, four… I've lost count!", "Count them again, just to be sure."),
          extras=(_ask_count,)),
    Topic("sums", ("plus", "minus", "times", "add", "sum", " + ", " - ", " × "),
          ("did a page of sums at the kitchen table", "added up the prices on a scrap of paper",
           "practised the times tables out loud", "checked the sums in an account book"),
          (("a sum", "a number you get by adding other numbers together"),
           ("a times table", "a list of the answers when you multiply a number by 1, 2, 3 and so on")),
          ("add two big numbers", ("write one number under the other", "add the ones column first",
                                   "carry any ten to the next column", "add the tens column")),
          ("Seven times eight… fifty-six!", "Check your sums twice."),
          extras=(_ask_arithmetic,)),
    Topic("colours", ("colour", "red", "blue", "yellow", "green", "paint"),
          ("mixed blue and yellow paint to make green", "sorted a basket of wool by colour",
           "painted the front door bright blue", "picked flowers of every colour"),
          (("a rainbow", "an arch of colours in the sky when the sun shines through rain"),
           ("a primary colour", "red, yellow or blue — colours that other colours can be mixed from")),
          ("make a new colour", ("put two paints side by side on a plate", "mix a little of one into the other",
                                 "add more until you like the colour", "test it on a scrap of paper")),
          ("What a lovely colour!", "Red and yellow make orange — look!"),
          extras=(_ask_colour,)),
    Topic("shapes", ("shape", "circle", "square", "triangle", "side"),
          ("cut paper into circles, squares and triangles", "drew a big circle with a piece of chalk",
           "built a square frame from four sticks", "looked for shapes in the clouds"),
          (("a triangle", "a flat shape with three straight sides"),
           ("a circle", "a perfectly round flat shape")),
          ("draw a good circle", ("tie a pencil to a piece of string", "hold the other end still in the middle",
                                  "keep the string tight", "move the pencil all the way round")),
          ("That cloud is a perfect circle!", "How many sides has it got?"),
          extras=(_ask_shape,)),
    Topic("telling the time", ("clock", "o'clock", "hour", "time", "watch"),
          ("wound the big clock in the hall", "checked the time on the church clock",
           "taught a child to tell the time", "set the alarm clock for six o'clock"),
          (("an hour", "sixty minutes; there are twenty-four of them in a day"),
           ("a clock", "a machine that shows the time, with an hour hand and a minute hand")),
          ("tell the time on a clock", ("look at the short hand for the hour",
                                        "look at the long hand for the minutes",
                                        "when the long hand points straight up, it is something o'clock",
                                        "when it points straight down, it is half past")),
          ("We're late — look at the time!", "That clock is five minutes fast."),
          expert="François", extras=(_ask_clock,)),
    Topic("pets", ("pet",) + tuple(c.pet.kind for c in CHARACTERS) + tuple(c.pet.name for c in CHARACTERS),
          ("gave {pet} fresh water and a good breakfast", "cleaned out the corner where {pet} sleeps",
           "sat and talked to {pet} for a while", "took {pet} to the animal doctor for a check-up"),
          (("a pet", "an animal that lives with people and is looked after by them"),
           ("a vet", "a doctor for pets and other animals")),
          ("choose a pet", ("think about how much room you have", "find out what the animal eats",
                            "ask how much time it needs every day",
                            "make sure someone can care for it when you are away")),
          ("Who's a good pet, then?", "Breakfast time!"),
          extras=(_ask_pet,)),
    Topic("birds", ("bird", "nest", "feather", "gull", "robin"),
          ("filled the bird feeder with seeds", "watched the gulls wheeling over the roofs",
           "found a robin's nest in the hedge", "picked up a blue feather from the path"),
          (("a nest", "a home that birds build from twigs, grass and moss to lay their eggs in"),
           ("a feather", "one of the light soft parts that cover a bird's body and help it fly")),
          ("feed the birds in winter", ("hang up a feeder away from cats", "fill it with seeds and nuts",
                                        "put out fresh water", "keep it filled every day")),
          ("Listen — that's a robin.", "Those gulls will steal your lunch!"),
          ),
    Topic("the forest", ("forest", "tree", "pine", "mushroom"),
          ("gathered mushrooms under the tall pines", "followed a deer track through the forest",
           "collected pine cones for the fire", "listened to the wind in the forest trees"),
          (("a forest", "a large area covered with trees"),
           ("a pine cone", "the hard woody cone of a pine tree that holds its seeds")),
          ("find your way in a forest", ("stay on the path", "notice big trees and rocks as you pass",
                                         "keep the sun on the same side", "turn back before it gets dark")),
          ("Stay on the path!", "Smell that — pine and rain."),
          expert="Łucja", places=("ostrow",)),
    Topic("woodwork", ("wood", "saw", "plank", "chair", "shelf", "plane"),
          ("sawed a long plank of oak", "planed the edge of a table until it was smooth",
           "built a small shelf for the kitchen", "mended a wobbly chair leg with a wood peg"),
          (("a plane", "a tool with a sharp blade that shaves wood smooth"),
           ("a plank", "a long flat piece of wood")),
          ("saw a straight line", ("measure and mark the line in pencil", "hold the wood firmly",
                                   "start with small gentle strokes", "let the saw do the work")),
          ("Measure twice, cut once.", "Smell that fresh wood!"),
          expert="Łucja"),
    Topic("the river", ("river", "bridge", "bank"),
          ("walked along the river bank", "watched the boats drift under the old stone bridge",
           "skimmed flat stones across the river", "fished from the bridge over the river"),
          (("a bridge", "something built across a river or a road so that you can get to the other side"),
           ("a river bank", "the land along each side of a river")),
          ("skim a stone on the river", ("find a flat, smooth stone", "stand side-on to the water",
                            "throw it low and flat with a flick of the wrist", "count the bounces")),
          ("Five bounces — a new record!", "The river is high today."),
          places=("mirelle",)),
    Topic("the mill", ("mill", "flour", "grain", "sack"),
          ("watched the great water wheel of the mill turn", "carried sacks of grain to the mill",
           "swept flour dust from the mill floor", "helped fill sacks of flour at the mill"),
          (("a mill", "a building with big stones that grind grain into flour"),
           ("grain", "the small hard seeds of plants like wheat, used to make flour")),
          ("turn grain into flour", ("clean the grain", "pour it between the mill stones",
                                     "let the turning stones grind it fine", "sift the flour into sacks")),
          ("The wheel never stops while the river runs.", "Mind the flour — it gets everywhere!"),
          places=("mirelle",)),
    Topic("walking in the hills", ("hill", "path", "climb"),
          ("climbed the steep path to the top of the hill", "walked across the hills with a map and a flask",
           "rested on a rock near the top of the hill", "followed the stony path over the hill"),
          (("a summit", "the very top of a hill or a mountain"),
           ("a footpath", "a narrow path for people walking")),
          ("go for a long walk in the hills", ("tell someone where you are going", "wear strong boots",
                                               "take water, food and a warm layer",
                                               "turn back if the weather gets bad")),
          ("Nearly at the top!", "What a view — you can see the sea from here."),
          places=("asbury",)),
    Topic("the night sky", ("star", "moon", "sky"),
          ("counted the stars above the roof", "looked at the moon through a telescope",
           "found the North Star in the sky", "watched a shooting star cross the sky"),
          (("the North Star",
            "a bright star that always sits in the north of the sky, so travellers can find their way"),
           ("a shooting star",
            "a tiny piece of rock from space that burns up as a streak of light in the sky")),
          ("find the North Star", ("wait for a clear night", "find the seven bright stars shaped like a saucepan",
                                   "follow the two stars at the end of the pan upwards",
                                   "the next bright star is the North Star")),
          ("Look — a shooting star!", "The moon is so bright tonight."),
          times=("night",), weather=("clear", "starry", "still")),
    Topic("bedtime", ("bed", "sleep", "dream", "pillow"),
          ("put on warm pyjamas and climbed into bed", "read a bedtime story by candlelight",
           "fluffed up the pillow", "blew out the candle and went to sleep"),
          (("a dream", "the pictures and stories your mind makes while you sleep"),
           ("a lullaby", "a soft gentle song to help someone fall asleep")),
          ("fall asleep more easily", ("go to bed at the same time each night", "stop bright lamps an hour before",
                                       "keep the room cool and dark", "breathe slowly and think of something calm")),
          ("Sleep well, and sweet dreams.", "Just five more minutes…"),
          times=("evening", "night")),
    Topic("illness", ("ill", "cold", "fever", "medicine", "cough", "doctor"),
          ("stayed in bed with a bad cold", "sipped hot honey and lemon for a cough",
           "took a spoonful of bitter medicine", "rested by the fire until the fever went down"),
          (("a fever", "when your body is hotter than usual because it is fighting an illness"),
           ("medicine", "something you take to help your body get better when you are ill")),
          ("look after a cold", ("rest as much as you can", "drink plenty of warm drinks",
                                 "keep warm", "see a doctor if you get worse or it lasts a long time")),
          ("Rest is the best medicine.", "Atishoo! Oh dear, not again."),
          expert="Ngozi"),
    Topic("friendship", ("friend",),
          ("wrote a kind note to a friend", "shared lunch with an old friend",
           "made up with a friend after a silly quarrel", "helped a friend carry a heavy box"),
          (("a friend", "someone you like and trust, who likes and trusts you back"),
           ("a quarrel", "an angry argument — it can happen even between good friends")),
          ("be a good friend", ("listen when your friend talks", "keep your promises",
                                "say sorry when you are wrong", "help without being asked")),
          ("That's what friends are for.", "I'm glad you came."),
          extras=(_ask_friend,)),
    Topic("feelings", ("feel", "felt"),
          ("talked with a friend about how {he} felt", "wrote down {his} feelings in a little diary",
           "took a deep breath when {he} felt cross", "sat quietly and noticed how {he} was feeling"),
          (("a feeling", "something you feel inside, like happy, sad, angry or scared"),
           ("calm", "feeling peaceful and not worried or upset")),
          ("calm down when you feel upset", ("stop and take three slow breaths", "name the feeling to yourself",
                                             "go somewhere quiet for a moment", "talk to someone you trust")),
          ("It's all right to feel that way.", "I feel much better now."),
          extras=(_ask_feeling,)),
    Topic("knitting", ("knit", "wool", "scarf", "needle"),
          ("knitted a warm scarf by the fire", "wound a skein of wool into a ball",
           "cast on forty stitches with new needles", "unpicked a row of knitting and started again"),
          (("a knitting needle", "a long smooth stick used in pairs to knit wool into cloth"),
           ("a stitch", "one loop of wool in a piece of knitting")),
          ("start knitting", ("make a slip knot on one needle", "cast on as many stitches as you need",
                              "knit each stitch onto the other needle", "keep going, row after row")),
          ("One more row and it's finished.", "Oh no, I've dropped a stitch!"),
          ),
    Topic("mending clothes", ("mend", "sew", "needle", "thread", "patch", "button"),
          ("sewed a patch on the knee of some old trousers", "threaded a needle by the window",
           "sewed a button back onto a coat", "mended a tear in a sleeve"),
          (("a thimble", "a small metal cap worn on a finger to push a needle when you sew"),
           ("a patch", "a piece of cloth sewn over a hole")),
          ("sew on a button", ("thread a needle and knot the end", "push it up through the cloth and a hole",
                               "go down through the other hole, six or seven times", "tie it off at the back")),
          ("A stitch in time saves nine.", "Good as new!"),
          ),
    Topic("cleaning", ("clean", "sweep", "swept", "broom", "dust", "wash", "scrub"),
          ("swept the floor with a big broom", "washed the windows until they sparkled",
           "dusted the shelves and the mantelpiece", "scrubbed the front step clean"),
          (("a broom", "a brush with a long handle for sweeping floors"),
           ("dust", "fine dry powder that settles on things that are not cleaned")),
          ("clean a room quickly", ("open the window", "put things back where they belong",
                                    "dust from the top down", "sweep the floor last")),
          ("Many hands make light work.", "Look how it shines!"),
          ),
    Topic("painting", ("paint", "brush", "picture", "easel"),
          ("painted a picture of {home}", "cleaned the paint brushes in a jar of water",
           "set up an easel and painted the view", "mixed paints on an old plate"),
          (("an easel", "a wooden stand that holds a picture while you paint it"),
           ("a palette", "a board or plate for mixing paints on")),
          ("paint a picture", ("sketch the shapes lightly in pencil", "paint the sky and big areas first",
                               "let it dry", "add the small details last")),
          ("It doesn't have to be perfect.", "A little more blue in the sky, I think."),
          ),
    Topic("candles", ("candle", "wax", "wick", "flame"),
          ("melted wax in a little pan to make candles", "dipped the wicks into the hot wax",
           "lit a candle in the window", "watched the small candle flame flicker"),
          (("a wick", "the string in a candle that you light"),
           ("wax", "the soft material candles are made of, which melts when it is warm")),
          ("make a dipped candle", ("melt the wax gently", "tie a wick to a stick",
                                    "dip it in the wax and let it cool", "dip again and again until it is thick")),
          ("Never leave a candle burning alone.", "Candlelight makes everything cosy."),
          ),
    Topic("swimming", ("swim", "swam"),
          ("swam out to the rocks and back", "went for a swim in the cool water",
           "taught a child to swim in the shallows", "dried off in the warm air after a long swim"),
          (("shallow water", "water near the edge that is not deep — a good place to learn to swim"),
           ("a stroke", "one way of moving your arms and legs to swim, like breaststroke")),
          ("swim safely", ("never swim alone", "stay where you can stand at first",
                           "watch out for currents", "get out before you feel cold")),
          ("The water is lovely once you're in!", "Race you to the rocks!"),
          places=("saltmere", "mirelle", "cote"), seasons=("summer",)),
    Topic("kites", ("kite",),
          ("flew a red kite high in the wind", "made a kite from paper and sticks",
           "untangled the kite string", "ran along to lift the kite into the air"),
          (("a kite", "a light frame covered with paper or cloth that flies in the wind on a long string"),
           ("a kite tail", "a long ribbon at the bottom of a kite that keeps it steady")),
          ("fly a kite", ("wait for a steady wind", "stand with your back to the wind",
                          "let out a little string as the kite rises", "pull gently if it starts to drop")),
          ("Higher! Let out more string!", "Hold on tight!"),
          places=("saltmere", "asbury", "fernhollow"), seasons=("spring", "summer", "autumn"),
          weather=("windy", "breezy", "blustery")),
    Topic("bicycles", ("bicycle", "wheel", "tyre", "pedal"),
          ("pumped up the tyres of an old bicycle", "oiled the bicycle chain",
           "rode a bicycle down the lane", "fixed a puncture in the bicycle's front wheel"),
          (("a puncture", "a small hole in a tyre that lets the air out"),
           ("a pedal", "the part of a bicycle you push round with your foot")),
          ("fix a puncture", ("take the tyre off the wheel", "find the hole by listening for air",
                              "glue a patch over the hole", "put the tyre back and pump it up")),
          ("Mind the potholes!", "Downhill all the way home!"),
          ),
    Topic("picnics", ("picnic",),
          ("packed a picnic basket with bread and cheese", "spread a blanket on the grass for a picnic",
           "ate a picnic under a shady tree", "shared the picnic crumbs with the birds"),
          (("a picnic", "a meal you carry outdoors and eat sitting on the grass"),
           ("a hamper", "a big basket with a lid for carrying a picnic")),
          ("pack a picnic", ("bring a blanket", "pack food that does not spill",
                             "take water to drink", "bring a bag for the rubbish")),
          ("This is the best spot for a picnic.", "Who ate all the sandwiches?"),
          seasons=("spring", "summer"), times=("morning", "afternoon"), weather=("sunny", "warm", "fine")),
    Topic("visiting family", ("family", "grandmother", "uncle", "cousin", "aunt"),
          ("visited {his} grandmother for lunch", "helped {his} uncle paint a fence",
           "played cards with {his} cousins", "wrote to {his} aunt, who lives far away"),
          (("a cousin", "the child of your aunt or uncle"),
           ("a grandmother", "the mother of your mother or father")),
          ("be a good guest when visiting family", ("bring a small present", "help to lay the table",
                               "offer to wash up", "say thank you when you leave")),
          ("You've grown so much!", "Stay for supper — there's plenty."),
          ),
    Topic("lost things", ("lost", "found", "look", "search"),
          ("looked everywhere for {his} {thing}", "found {his} {thing} under a cushion",
           "searched the house for a lost key", "found a lost glove and hung it on the gate"),
          (("lost property", "things people have left behind, kept safe until their owners collect them"),
           ("a search", "a careful look for something that is missing")),
          ("find something you have lost", ("stay calm", "think back to when you last had it",
                                            "look there first", "search one room at a time")),
          ("Where did I put it?", "Found it! It was here all along."),
          ),
    Topic("homes", ("home", "house", "live"),
          ("swept the front step of {his} house", "painted the window frames of {his} house",
           "planted flowers by the door of {his} home", "fixed a loose tile on the roof of {his} house"),
          (("a cottage", "a small house, usually in the country"),
           ("a chimney", "the tall pipe on a house that carries smoke away from the fire")),
          ("make a house cosy", ("light a fire or a lamp", "put a blanket on the chair",
                                 "open the window to let fresh air in, then close it", "put flowers on the table")),
          ("There's no place like home.", "Come in, come in — mind the step."),
          extras=(_ask_home,)),
    Topic("jobs", ("job", "work"),
          ("set off to work early, as a good {job} should", "finished a long day's work",
           "showed a young helper how to do the job", "talked about work with a neighbour"),
          (("a job", "the work that someone does, often to earn money"),
           ("an apprentice", "a young person learning a job from someone skilled")),
          ("learn a new job", ("watch someone skilled at work", "ask lots of questions",
                               "practise the simple tasks first", "do not be afraid to make mistakes")),
          ("Every job is easier with a friend.", "Back to work!"),
          extras=(_ask_job,)),
    Topic("helping neighbours", ("neighbour", "help"),
          ("helped a neighbour carry shopping up the stairs", "fed a neighbour's hens while they were away",
           "fixed a neighbour's fence after the wind", "brought soup to an elderly neighbour"),
          (("a neighbour", "someone who lives next door or near you"),
           ("a favour", "something kind you do to help someone")),
          ("help a neighbour", ("knock and ask if they need anything", "offer to carry heavy things",
                                "share a little extra food", "check on them when the weather is bad")),
          ("What are neighbours for?", "Thank you, that's kind of you."),
          ),
)

# ---------------------------------------------------------------------------------------------
# Narratives
# ---------------------------------------------------------------------------------------------

_OPENINGS = (
    "One {when}, {name} {act}.",
    "It was {a_when} in {place}. {name} {act}.",
    "{name}, the {job} from {place}, {act} one {when}.",
    "{name} lives in {place}. One {when}, {he} {act}.",
    "In {place}, {name} {act} one {when}.",
)
_CONNECTORS = ("Then", "After that,", "Later,", "Next,")
_FLOURISHES = (
    "It took a long time — longer than {he} had expected — but {he} did not give up.",
    "{He} waited… and waited… and at last it was done.",
    "Not everything went to plan — but that was all right.",
    "For a moment everything was quiet… then the day went on.",
)
_AFTER_FEELINGS = ("happy", "proud", "tired but happy", "calm", "content", "pleased")


def _fields(hero: Character, season: str) -> dict[str, str]:
    he, _, his = _PRONOUNS[hero.he]
    return {"name": hero.name, "he": he, "He": _cap(he), "his": his, "job": hero.job,
            "home": PLACES[hero.home].name, "pet": hero.pet.name, "food": hero.food, "thing": hero.thing,
            "season": season}


def _pick_hero(rng: random.Random, topic: Topic) -> Character:
    if topic.expert and rng.random() < 0.4:
        return PEOPLE[topic.expert]
    return rng.choice(CHARACTERS)


def _journey(src: str, dst: str) -> str:
    how = "took the train" if src in RAILWAY and dst in RAILWAY else "travelled by road"
    return f"{how} from {PLACES[src].name} to {PLACES[dst].name}"


def _quote(rng: random.Random, line: str, speaker: str) -> str:
    if rng.random() < 0.5:
        return f"“{line[:-1] + ',' if line.endswith('.') else line}” said {speaker}."
    return f"{speaker} said, “{line}”"


def _narrative(rng: random.Random, topic: Topic, short: bool = False) -> str:
    hero = _pick_hero(rng, topic)
    place = hero.home if not topic.places or hero.home in topic.places else rng.choice(topic.places)
    season, time = rng.choice(topic.seasons), rng.choice(topic.times)
    words = topic.weather or PLACES[place].climate[season][0]
    if time == "night":
        words = [w for w in words if w not in _DAYLIGHT_WEATHER] or ["still"]
    when = f"{rng.choice(words)} {season} {time}"
    f = _fields(hero, season)
    acts = [a.format(**f) for a in rng.sample(topic.activities, 2 if short else rng.randint(2, 3))]
    here, away = PLACES[place].name, place != hero.home

    if away:
        sentences = [f"One {when}, {hero.name} {_journey(hero.home, place)}.", f"In {here}, {f['he']} {acts[0]}."]
    else:
        sentences = [rng.choice(_OPENINGS).format(when=when, a_when=_a(when), place=here, act=acts[0], **f)]
    connectors = rng.sample(_CONNECTORS, len(acts) - 1)
    sentences += [f"{word} {f['he']} {act}." for word, act in zip(connectors, acts[1:])]

    if not short:
        pet = hero.pet
        if rng.random() < 0.5:
            doing = f"stayed at home in {f['home']}" if away else rng.choice(pet.habits)
            sentences.insert(1, f"{hero.name}'s {pet.colour} {pet.kind}, {pet.name}, {doing}.")
        speaker = hero.name
        if rng.random() < 0.35:
            friend = rng.choice([c for c in CHARACTERS if c is not hero])
            if friend.home == place:
                too = "" if away else " too"
                sentences.append(f"{friend.name}, who lives in {here}{too}, came to visit.")
            else:
                sentences.append(f"{friend.name} came over from {PLACES[friend.home].name} to visit.")
            speaker = rng.choice((hero.name, friend.name))
        if rng.random() < 0.4:
            sentences.append(rng.choice((f"Being {hero.temperament}, {hero.name} {rng.choice(hero.manner)}.",
                                         f"{hero.name} was {hero.temperament}, as always, and "
                                         f"{rng.choice(hero.manner)}.")))
        if rng.random() < 0.5:
            sentences.append(_quote(rng, rng.choice(topic.quotes), speaker))
        if rng.random() < 0.2:
            sentences.append(rng.choice(_FLOURISHES).format(**f))

    feeling = rng.choice(_AFTER_FEELINGS)
    if time == "night":
        sentences.append(f"That night, {hero.name} slept soundly, feeling {feeling}.")
    else:
        sentences.append(rng.choice((f"{hero.name} felt {feeling} when it was all done.",
                                     f"It had been a good day, and {hero.name} felt {feeling}.")))
        # Supper "in the evening" only follows a scene earlier in the day.
        if not short and time in ("morning", "afternoon") and rng.random() < 0.5:
            back = f"went back to {f['home']}" if away else "went home"
            sentences.append(f"In the evening, {f['he']} {back} and had {hero.food} for supper.")

    if len(sentences) >= 5 and rng.random() < 0.5:
        half = len(sentences) // 2
        return " ".join(sentences[:half]) + "\n\n" + " ".join(sentences[half:])
    return " ".join(sentences)


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------

_SYSTEM_PROMPTS = (
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
    return question.format(t=term), f"{_cap(term)} is {meaning}."


def _ask_howto(rng: random.Random, topic: Topic) -> tuple[str, str]:
    task, steps = topic.howto
    question = rng.choice(("How do I {t}?", "Can you tell me how to {t}?", "What's the best way to {t}?"))
    if rng.random() < 0.5:
        answer = f"Here is how to {task}:\n" + "\n".join(f"{i}. {_cap(s)}." for i, s in enumerate(steps, 1))
    else:
        order = ["First", "Then", "After that"][:len(steps) - 1] + ["Finally"]
        answer = " ".join(f"{word}, {step}." for word, step in zip(order, steps))
    return question.format(t=task), answer


def _ask_story(rng: random.Random, topic: Topic) -> tuple[str, str]:
    question = rng.choice(("Tell me a short story about {t}.", "Can you tell me a story about {t}?",
                           "Write a little story about {t}, please."))
    return question.format(t=topic.name), _narrative(rng, topic, short=True)


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


def _conversation(rng: random.Random, topic: Topic) -> str:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
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
            doc = _conversation(rng, topic) if chat else _narrative(rng, topic)
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


# ---------------------------------------------------------------------------------------------
# User data
# ---------------------------------------------------------------------------------------------

CORPUS_SUFFIXES = (".txt", ".jsonl")
# Exactly one newline on each side of a separator belongs to the separator, so a file written by
# `write_corpus` reads back as the same documents, and hand-written files may put it on its own line.
_SEPARATOR = re.compile(r"\n?" + re.escape(END_OF_TEXT) + r"\n?")


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinyLLMError(f"{path}: not valid UTF-8 at byte offset {e.start}; "
                           "re-save the file as UTF-8") from None


def _read_txt(path: Path) -> list[str]:
    text = _read_utf8(path)
    return [doc for doc in _SEPARATOR.split(text) if doc.strip()]


def _jsonl_document(obj: object, where: str) -> str:
    if not isinstance(obj, dict) or ("text" in obj) == ("messages" in obj):
        raise TinyLLMError(f"{where}: each line must be a JSON object with either \"text\" or \"messages\"")
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise TinyLLMError(f"{where}: \"text\" must be a string")
        return obj["text"]
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise TinyLLMError(f"{where}: \"messages\" must be a non-empty list of "
                           "{\"role\": ..., \"content\": ...} objects")
    try:
        return render_chat(messages)
    except ValueError as e:
        raise TinyLLMError(f"{where}: {e}") from None


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    # Split on "\n" only, so line numbers match what an editor shows.
    for number, line in enumerate(_read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TinyLLMError(f"{where}: invalid JSON ({e.msg}); each line must be one JSON object") from None
        doc = _jsonl_document(obj, where)
        if doc.strip():
            docs.append(doc)
    return docs


def load_documents(source: str, size: int = BUILTIN_DEFAULT_SIZE, seed: int = 0) -> list[str]:
    """The documents of `source`: "builtin" (generated with size and seed), a .txt file (one
    document, or several separated by <|endoftext|>), a .jsonl file ("text" or "messages" per
    line), or a directory searched recursively for both, in path order."""
    if source == "builtin":
        return generate_builtin_corpus(size, seed)
    path = Path(source)
    if not path.exists():
        raise TinyLLMError(f"{path}: no such file or directory; "
                           "pass 'builtin', a .txt or .jsonl file, or a directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
        if not files:
            raise TinyLLMError(f"{path}: directory has no .txt or .jsonl files; "
                               "add some or point at another path")
    elif path.suffix.lower() in CORPUS_SUFFIXES:
        files = [path]
    else:
        raise TinyLLMError(f"{path}: unsupported file type {path.suffix!r}; "
                           "use a .txt or .jsonl file or a directory")
    docs = []
    for file in files:
        docs += _read_jsonl(file) if file.suffix.lower() == ".jsonl" else _read_txt(file)
    if not docs:
        raise TinyLLMError(f"{path}: the corpus is empty (no text at all); add some text to it")
    return docs


# ---------------------------------------------------------------------------------------------
# Split, write, stats, tokens
# ---------------------------------------------------------------------------------------------

def _unit_hash(doc: str, seed: int) -> float:
    digest = hashlib.blake2b(doc.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_documents(docs: list[str], val_fraction: float = 0.05, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, validation): each document wholly in one, input order kept within each.

    A document's side is decided by a seeded hash of its text, so the split is deterministic,
    stable when documents are added, and a document that occurs twice cannot leak across it.
    """
    if len(docs) < 2:
        raise TinyLLMError(f"need at least 2 documents to make a validation split, got {len(docs)}; "
                           "add more text")
    if not 0 < val_fraction < 1:
        raise TinyLLMError(f"validation fraction {val_fraction}: must be between 0 and 1 (exclusive)")
    scores = [_unit_hash(doc, seed) for doc in docs]
    in_val = [s < val_fraction for s in scores]
    # Tiny corpora can land wholly on one side; move the document nearest the cut across.
    if not any(in_val):
        in_val[scores.index(min(scores))] = True
    elif all(in_val):
        in_val[scores.index(max(scores))] = False
    train = [d for d, v in zip(docs, in_val) if not v]
    val = [d for d, v in zip(docs, in_val) if v]
    return train, val


def write_corpus(docs: list[str], path: str | Path, force: bool = False) -> None:
    """Write `docs` to one .txt file, separated by "\\n<|endoftext|>\\n", atomically;
    `load_documents(path)` returns the same documents."""
    path = Path(path)
    if path.suffix.lower() != ".txt":
        raise TinyLLMError(f"{path}: a corpus is written as a .txt file; choose a name ending in .txt")
    if path.is_dir():
        raise TinyLLMError(f"{path}: is a directory; choose a file name")
    if path.exists() and not force:
        raise TinyLLMError(f"{path}: already exists; pass --force to overwrite it")
    if not docs:
        raise TinyLLMError(f"{path}: no documents to write")
    for i, doc in enumerate(docs):
        # Either would read back as something else: a split document, or no document.
        if END_OF_TEXT in doc:
            raise TinyLLMError(f"document {i} contains {END_OF_TEXT}, which separates documents "
                               f"in {path}; remove it")
        if not doc.strip():
            raise TinyLLMError(f"document {i} is blank and would not survive a round trip "
                               f"through {path}; drop it")
    data = f"\n{END_OF_TEXT}\n".join(docs).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def corpus_stats(docs: list[str]) -> dict[str, int]:
    """Counts: documents, characters, bytes (UTF-8), chats (ChatML conversations), narratives (the rest)."""
    chats = sum(doc.startswith(IM_START) for doc in docs)
    return {"documents": len(docs), "characters": sum(map(len, docs)),
            "bytes": sum(len(doc.encode("utf-8")) for doc in docs),
            "chats": chats, "narratives": len(docs) - chats}


_ENCODE_CHUNK = 1024  # documents per encode_batch call: bounds the list-of-lists held at once


def encode_documents(docs: list[str], encode_batch: Callable[[list[str]], list[list[int]]],
                     eot_id: int) -> np.ndarray:
    """One int32 token stream: each document's ids followed by `eot_id`, in order."""
    parts = []
    for start in range(0, len(docs), _ENCODE_CHUNK):
        for ids in encode_batch(docs[start:start + _ENCODE_CHUNK]):
            parts += [np.asarray(ids, dtype=np.int32), np.array([eot_id], dtype=np.int32)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
