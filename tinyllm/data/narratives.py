"""Short stories for the built-in corpus: a hero from the world does two or three things from a topic.

`generate_narrative` picks the hero (often the topic's expert), a place and a moment the topic
allows, and weather that fits them, then strings the topic's activities together with the hero's
pet, a visiting friend, a quote and how it all ended. Stories told inside a conversation use the
`short` form.
"""

from __future__ import annotations

import random

from tinyllm.data.topic import Topic
from tinyllm.data.world import CHARACTERS, PEOPLE, PLACES, PRONOUNS, RAILWAY, Character, upper_first, with_article

# Weather words that would contradict a night-time scene.
_DAYLIGHT_WEATHER = {"sunny", "bright", "blazing", "golden", "dusty", "hot"}

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
    he, _, his = PRONOUNS[hero.he]
    return {"name": hero.name, "he": he, "He": upper_first(he), "his": his, "job": hero.job,
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


def generate_narrative(rng: random.Random, topic: Topic, short: bool = False) -> str:
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
        opening = rng.choice(_OPENINGS)
        sentences = [opening.format(when=when, a_when=with_article(when), place=here, act=acts[0], **f)]
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
