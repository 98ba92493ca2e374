"""The fixed world every built-in document is about: the Amber Coast's places, people and pets.

Everything a document says about a person or a place comes from these tables, so no two documents
can disagree (Mira always lives in Saltmere and keeps a grey cat called Pebble). Also here: the
map arithmetic on them (compass directions, nearest station) and the small English helpers the
generators phrase things with (articles, capitals, lists, counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SEASONS = ("spring", "summer", "autumn", "winter")
DAY_TIMES = ("morning", "afternoon", "evening")  # "night" only where a topic asks for it


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
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}  # (subject, object, possessive)


# --- phrasing --------------------------------------------------------------------------------

def with_article(phrase: str) -> str:
    """The phrase after "a" or "an", as fits: "an apple", "a cat"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def upper_first(text: str) -> str:
    """The text with its first letter in capitals and the rest untouched."""
    return text[:1].upper() + text[1:]


def join_with_and(items: list[str]) -> str:
    """The items as an English list: "x", "x and y", "x, y and z"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def quantity(n: int, word: str) -> str:
    """n and the word, plural unless n is 1: "1 coin", "3 coins"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- the map ---------------------------------------------------------------------------------

def direction(src: str, dst: str) -> str:
    """The compass point (of eight) from PLACES[src] to PLACES[dst]."""
    (x0, y0), (x1, y1) = PLACES[src].xy, PLACES[dst].xy
    compass = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
    return compass[round(math.degrees(math.atan2(y1 - y0, x1 - x0)) / 45) % 8]


def nearest_station(place: str) -> str:
    """The RAILWAY station closest to PLACES[place] (itself, if it has one)."""
    return min(RAILWAY, key=lambda station: math.dist(PLACES[station].xy, PLACES[place].xy))
