"""Topic-specific questions for conversations: weather, trains, sums, pets, ... with their answers.

Each is an `Asker`: given the random stream (and its topic, which these ignore) it returns one
(question, answer) pair, and every answer is derived from the world tables in `world.py`. Topics
list them in their `extras`. Questions on the world's facts (homes, jobs, pets, food, weather,
directions) come from `facts.py`, in its training phrasings.
"""

from __future__ import annotations

import random

from tinyllm.data.facts import ask_fact
from tinyllm.data.topic import Topic
from tinyllm.data.world import (CHARACTERS, PLACES, PRONOUNS, RAILWAY, SEASONS, direction, join_with_and,
                                nearest_station, quantity, upper_first, with_article)


def ask_weather(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.75:
        return ask_fact(rng, "climate")
    place = PLACES[rng.choice(list(PLACES))]
    snowy = [s for s in SEASONS if "snowy" in place.climate[s][0]]
    if snowy:
        return (f"Does it snow in {place.name}?",
                f"Yes. In {snowy[0]}, the weather in {place.name} is {place.climate[snowy[0]][1]}.")
    return (f"Does it snow in {place.name}?",
            f"Hardly ever. Even in winter, the weather in {place.name} is {place.climate['winter'][1]}.")


def ask_season(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    i = rng.randrange(4)
    season, after, before = SEASONS[i], SEASONS[(i + 1) % 4], SEASONS[i - 1]
    kind = rng.randrange(3)
    if kind == 0:
        return f"What season comes after {season}?", f"After {season} comes {after}."
    if kind == 1:
        return f"Which season comes before {season}?", f"{upper_first(before)} comes before {season}."
    return ask_fact(rng, "climate")


def ask_price(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    prices = (("apples", 2), ("loaves of bread", 3), ("eggs", 1), ("jars of honey", 5), ("fish", 4))
    if rng.random() < 0.2:
        goods = join_with_and([item for item, _ in prices])
        return ("What can I buy at the market in São Lírio?",
                f"At the market in São Lírio you can buy {goods}, and much more.")
    item, price = rng.choice(prices)
    n = rng.randint(2, 9)
    return (f"At the market in São Lírio, how much do {n} {item} cost?",
            f"{upper_first(item)} cost {quantity(price, 'coin')} each at the market, so {n} {item} cost "
            f"{quantity(n * price, 'coin')}.")


def ask_train(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    src, dst = rng.sample(list(PLACES), 2)
    a, b = PLACES[src].name, PLACES[dst].name
    if rng.random() < 0.25:
        if src in RAILWAY:
            return f"Is there a train station in {a}?", f"Yes — {a} is on the coast railway."
        return (f"Is there a train station in {a}?",
                f"No. The nearest station to {a} is {PLACES[nearest_station(src)].name}.")
    question = f"How do I get from {a} to {b} by train?"
    if src not in RAILWAY or dst not in RAILWAY:
        off, on = (src, dst) if src not in RAILWAY else (dst, src)
        station = nearest_station(off)
        if station == on:
            return question, (f"There is no train station in {PLACES[off].name}, so you go by road: "
                              f"{PLACES[dst].name} is {direction(src, dst)} of {PLACES[src].name}.")
        return question, (f"There is no train station in {PLACES[off].name}. Take the train between "
                          f"{PLACES[on].name} and {PLACES[station].name}, and go the rest of the way by road.")
    i, j = RAILWAY.index(src), RAILWAY.index(dst)
    stops = RAILWAY[i + 1:j] if i < j else RAILWAY[j + 1:i][::-1]
    end = PLACES[RAILWAY[-1] if i < j else RAILWAY[0]].name
    if not stops:
        return question, f"Take the train towards {end}: {b} is the very next stop after {a}."
    return question, (f"Take the train from {a} towards {end}. It stops at "
                      f"{join_with_and([PLACES[s].name for s in stops])}, and then at {b}.")


def ask_direction(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    return ask_fact(rng, "direction")


def ask_count(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    owner, giver = rng.sample(CHARACTERS, 2)
    things = rng.choice(("apples", "eggs", "shells", "pebbles", "buttons", "stamps", "plums"))
    kind = rng.randrange(4)
    if kind == 0:
        n, m = rng.randint(2, 10), rng.randint(1, 10)
        him = PRONOUNS[owner.he][1]
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
    return (f"How many legs does {with_article(animal)} have?",
            f"{upper_first(with_article(animal))} has {legs} legs.")


def ask_arithmetic(rng: random.Random, _topic: Topic) -> tuple[str, str]:
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


def ask_colour(rng: random.Random, _topic: Topic) -> tuple[str, str]:
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
        return f"What colour is {thing}?", f"{upper_first(thing)} is {colour}."
    owner = rng.choice(CHARACTERS)
    pet = owner.pet
    return (f"What colour is {owner.name}'s {pet.kind}?",
            f"{owner.name}'s {pet.kind}, {pet.name}, is {pet.colour}.")


def ask_shape(rng: random.Random, _topic: Topic) -> tuple[str, str]:
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
    return f"What shape is {thing}?", f"{upper_first(thing)} is shaped like {shape}."


def ask_clock(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.2:
        return rng.choice((("How many minutes are there in an hour?", "There are sixty minutes in an hour."),
                           ("How many hours are there in a day?", "There are twenty-four hours in a day.")))
    h, k = rng.randint(1, 12), rng.randint(1, 11)
    if rng.random() < 0.5:
        return (f"It is {h} o'clock. What time will it be in {quantity(k, 'hour')}?",
                f"It will be {(h - 1 + k) % 12 + 1} o'clock.")
    return (f"It is {h} o'clock. What time was it {quantity(k, 'hour')} ago?",
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


def ask_pet(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind < 2:
        return ask_fact(rng, ("pet", "pet name")[kind])
    owner = rng.choice(CHARACTERS)
    pet = owner.pet
    if kind == 2:
        other = rng.choice([c.pet.kind for c in CHARACTERS if c.pet.kind != pet.kind])
        return (f"Does {owner.name} have {with_article(other)}?",
                f"No — {owner.name} has {with_article(pet.colour)} {pet.kind} called {pet.name}, "
                f"not {with_article(other)}.")
    return (f"How do I look after {with_article(pet.kind)}?",
            f"To look after {with_article(pet.kind)}, {_PET_CARE[pet.kind]}.")


_FRIEND_TIPS = (
    ("How can I make a new friend?",
     "Say hello, ask them about something they like, and listen to the answer. Friendship grows slowly."),
    ("What makes a good friend?",
     "A good friend listens, keeps promises, says sorry when they are wrong, and is kind when you are sad."),
    ("I had a quarrel with my friend. What should I do?",
     "Wait until you both feel calm, then talk. Say sorry for your part, and listen to your friend's side."),
)


def ask_friend(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.3:
        return rng.choice(_FRIEND_TIPS)
    person = rng.choice(CHARACTERS)
    he = PRONOUNS[person.he][0]
    return (f"What is {person.name} like as a friend?",
            f"{person.name} is {person.temperament} — {he} {rng.choice(person.manner)}. "
            f"{upper_first(he)} is a good friend to everyone in {PLACES[person.home].name}.")


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


def ask_feeling(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    feeling, (own, friend) = rng.choice(list(_FEELINGS.items()))
    if rng.random() < 0.6:
        question = rng.choice(("I feel {f}. What should I do?", "What can I do when I feel {f}?"))
        return question.format(f=feeling), own
    return f"My friend feels {feeling}. How can I help?", friend


def ask_food(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    return ask_fact(rng, "food")


def ask_home(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.6:
        return ask_fact(rng, "home")
    key = rng.choice(list(PLACES))
    people = [c.name for c in CHARACTERS if c.home == key]
    verb = "lives" if len(people) == 1 else "live"
    return f"Who lives in {PLACES[key].name}?", f"{join_with_and(people)} {verb} in {PLACES[key].name}."


def ask_job(rng: random.Random, _topic: Topic) -> tuple[str, str]:
    if rng.random() < 0.7:
        return ask_fact(rng, "job")
    person = rng.choice(CHARACTERS)
    place = PLACES[person.home].name
    his = PRONOUNS[person.he][2]
    return (f"Who is the {person.job} in {place}?",
            f"{person.name} is the {person.job} in {place}; that is {his} job.")

