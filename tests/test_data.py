"""tinyllm.data: the built-in corpus and its world, its facts as questions, user data (files and Hugging
Face datasets), the split, corpus files, token streams and which tokens are trained on."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tinyllm import data
from tinyllm.chat import IM_END, IM_START, SPECIAL_TOKENS, render_chat
from tinyllm.data import facts
from tinyllm.data.facts import FACTS, FACTS_BY_KIND, fact_questions, states
from tinyllm.dataset import tokenize, tokenize_for_training
from tinyllm.errors import TinyLLMError
from tinyllm.tokenizer import Tokenizer

# Several shuffled rounds of (topic, kind): every topic appears as a story and as a conversation.
SAMPLE_SIZE = data.BUILTIN_DEFAULT_SIZE  # the corpus models are trained on by default


@pytest.fixture(scope="module")
def tagged():
    return data.generate_builtin_corpus_with_topics(SAMPLE_SIZE, seed=0)


@pytest.fixture(scope="module")
def docs(tagged):
    return [doc for _, doc in tagged]


def is_chat(doc: str) -> bool:
    return doc.startswith(IM_START)


# --- the built-in corpus -----------------------------------------------------------------------

def test_same_seed_same_documents_and_other_seed_other_documents():
    assert data.generate_builtin_corpus(50_000, seed=1) == data.generate_builtin_corpus(50_000, seed=1)
    assert data.generate_builtin_corpus(50_000, seed=1) != data.generate_builtin_corpus(50_000, seed=2)


def test_smaller_size_is_a_prefix_of_larger():
    small = data.generate_builtin_corpus(30_000, seed=7)
    large = data.generate_builtin_corpus(120_000, seed=7)
    assert len(small) < len(large)
    assert large[:len(small)] == small


@pytest.mark.parametrize("size", [1, 10_000, 123_457])
def test_stops_at_first_document_past_size(size):
    docs = data.generate_builtin_corpus(size, seed=3)
    total = sum(map(len, docs))
    assert total >= size
    assert total - len(docs[-1]) < size


def test_plain_corpus_is_the_tagged_corpus(docs):
    assert data.generate_builtin_corpus(SAMPLE_SIZE, seed=0) == docs


def test_at_least_50_topics_each_as_story_and_conversation(tagged):
    names = [topic.name for topic in data.TOPICS]
    assert len(names) >= 50
    assert len(set(names)) == len(names)
    kinds = {name: set() for name in names}
    for name, doc in tagged:
        if name != data.FACTS_TAG:
            kinds[name].add(is_chat(doc))
    missing = [name for name, seen in kinds.items() if seen != {True, False}]
    assert not missing, f"topics without both a story and a conversation: {missing}"


def test_every_document_is_about_its_topic(tagged):
    keywords = {topic.name: topic.keywords for topic in data.TOPICS}
    off_topic = [(name, doc) for name, doc in tagged
                 if name != data.FACTS_TAG and not any(k.lower() in doc.lower() for k in keywords[name])]
    assert not off_topic, off_topic[:3]


def test_topic_documents_are_about_60_percent_narratives(tagged):
    stats = data.corpus_stats([doc for name, doc in tagged if name != data.FACTS_TAG])
    assert 0.55 <= stats["narratives"] / stats["documents"] <= 0.65


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.8])
def test_fact_chats_take_their_share_of_the_characters(fraction):
    tagged = data.generate_builtin_corpus_with_topics(200_000, seed=2, qa_fraction=fraction)
    facts = [doc for name, doc in tagged if name == data.FACTS_TAG]
    assert all(is_chat(doc) for doc in facts)
    share = sum(map(len, facts)) / sum(len(doc) for _, doc in tagged)
    assert abs(share - fraction) < 0.01, share


# --- the world's facts as questions ---------------------------------------------------------------

def test_every_fact_of_the_world_is_asked():
    counts = {kind: len(facts) for kind, facts in FACTS_BY_KIND.items()}
    people, places = len(data.CHARACTERS), len(data.PLACES)
    assert counts == {"home": people, "job": people, "pet": people, "pet name": people, "food": people,
                      "temperament": people, "climate": places * 4, "railway": places,
                      "direction": places * (places - 1)}
    assert all(len(kind.questions) >= 6 and len(kind.held_out) >= 3 for kind in facts.KINDS.values())


def test_each_answer_states_its_fact_and_no_other():
    for fact in FACTS:
        assert fact.value and fact.wrong and not set(fact.value) & set(fact.wrong)
        assert all(states(answer, fact) for answer in fact.answers), fact
        # An answer about another subject of the same kind does not pass for this one.
        others = [f for f in FACTS_BY_KIND[fact.kind] if f.value != fact.value]
        assert not any(states(answer, fact) for other in others for answer in other.answers[:1]), fact


def test_states_matches_whole_words_only():
    north = next(f for f in FACTS_BY_KIND["direction"] if f.value == ("north",))
    assert states("Go north from there.", north)
    assert not states("It is north-east of there.", north)  # a competing value
    assert not states("It is northern.", north)
    dot = next(f for f in FACTS_BY_KIND["pet name"] if f.value == ("Dot",))
    assert not states("Then it is dotted.", dot)


def test_held_out_phrasings_are_in_no_document_and_trained_ones_are(docs):
    text = "\n".join(docs)
    for kind, of_kind in FACTS_BY_KIND.items():
        for phrasing in facts.KINDS[kind].held_out:
            leaked = [f.question(phrasing) for f in of_kind if f.question(phrasing) in text]
            assert not leaked, leaked[:3]
        for phrasing in facts.KINDS[kind].questions:
            assert any(f.question(phrasing) in text for f in of_kind), phrasing


def test_fact_questions_ask_every_fact_seen_and_held_out_some_in_a_second_turn():
    questions = fact_questions()
    assert len(questions) == 2 * len(FACTS)
    asked = [sorted(FACTS.index(q.fact) for q in questions if q.held_out == held_out) for held_out in (False, True)]
    assert asked[0] == asked[1] == list(range(len(FACTS)))
    assert all(q.messages[-1]["role"] == "user" for q in questions)
    second_turns = [q for q in questions if len(q.messages) == 3]
    assert len(second_turns) == len(FACTS) - len(FACTS) % 2  # every second fact, in both phrasings
    assert all(q.messages[1]["role"] == "assistant" for q in second_turns)


CHATML_MESSAGE = re.compile(re.escape(IM_START) + r"(system|user|assistant)\n(.*?)" + re.escape(IM_END) + r"\n",
                            re.DOTALL)


def parse_chatml(doc: str) -> list[dict]:
    messages, pos = [], 0
    while pos < len(doc):
        m = CHATML_MESSAGE.match(doc, pos)
        assert m, f"not ChatML at offset {pos}: {doc[pos:pos + 80]!r}"
        messages.append({"role": m[1], "content": m[2]})
        pos = m.end()
    return messages


def test_conversations_are_chatml_with_user_and_assistant_turns(docs):
    chats = [doc for doc in docs if is_chat(doc)]
    assert len(chats) > 100
    for doc in chats:
        messages = parse_chatml(doc)
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2), roles
        assert all(m["content"].strip() and not any(t in m["content"] for t in SPECIAL_TOKENS) for m in messages)
        assert render_chat(messages) == doc


def test_narratives_are_plain_text(docs):
    narratives = [doc for doc in docs if not is_chat(doc)]
    assert len(narratives) > 100
    assert not any(t in doc for doc in narratives for t in SPECIAL_TOKENS)
    assert any("\n\n" in doc for doc in narratives)  # some stories have two paragraphs


def test_non_ascii_names_places_and_punctuation(docs):
    text = "".join(docs)
    for s in ("Zoë", "Søren", "José", "Łucja", "François", "Ngozi", "Ana-Maria",
              "Åsbury", "São Lírio", "Côte-Brûlée", "Ostrów Mały", "—", "…", "“", "”"):
        assert s in text, s


# The generator could put one person's pet, home, job or food next to another person's name;
# these patterns are what its templates write, so each must find many matches and no mistakes.
def alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


PEOPLE = data.PEOPLE
NAMES = alternation(PEOPLE)
KINDS = alternation({c.pet.kind for c in data.CHARACTERS})
COLOURS = alternation({c.pet.colour for c in data.CHARACTERS})
PLACE_NAMES = alternation(p.name for p in data.PLACES.values())
JOBS = alternation(c.job for c in data.CHARACTERS)
HOME_NAME = {c.name: data.PLACES[c.home].name for c in data.CHARACTERS}


def test_world_is_consistent_across_documents(docs):
    text = "\n".join(docs)
    checks = {
        "pet": (rf"\b({NAMES})'s (?:({COLOURS}) )?({KINDS})\b",
                lambda m: m[3] == PEOPLE[m[1]].pet.kind and m[2] in (None, PEOPLE[m[1]].pet.colour)),
        "pet name": (rf"\b({KINDS}),? (?:called )?({alternation(c.pet.name for c in data.CHARACTERS)})\b",
                     lambda m: any(c.pet.kind == m[1] and c.pet.name == m[2] for c in data.CHARACTERS)),
        "home": (rf"\b({NAMES}),? (?:who )?lives in ({PLACE_NAMES})",
                 lambda m: m[2] == HOME_NAME[m[1]]),
        "job": (rf"\b({NAMES}),? (?:the|works as an?) ({JOBS})\b",
                lambda m: m[2] == PEOPLE[m[1]].job),
        "food": (rf"\b({NAMES})'s favourite food is ([^.]+)\.",
                 lambda m: m[2] == PEOPLE[m[1]].food),
    }
    for what, (pattern, ok) in checks.items():
        matches = list(re.finditer(pattern, text))
        assert len(matches) >= 5, f"{what}: only {len(matches)} matches"
        wrong = [m[0] for m in matches if not ok(m)]
        assert not wrong, f"{what}: {wrong[:5]}"


def test_weather_answers_match_each_place_climate(docs):
    text = "\n".join(docs)
    matches = list(re.finditer(rf"In (spring|summer|autumn|winter), the weather in ({PLACE_NAMES}) is usually "
                               r"(.+?)\.<", text))
    assert len(matches) >= 5
    climate = {p.name: p.climate for p in data.PLACES.values()}
    assert all(m[3] == climate[m[2]][m[1]][1] for m in matches)
    # Snow only where a climate has it: Côte-Brûlée never gets a "Yes".
    for m in re.finditer(rf"Does it snow in ({PLACE_NAMES})\?{re.escape(IM_END)}\n{re.escape(IM_START)}"
                         r"assistant\n(?:Sure! |Of course\. )?(\w+)", text):
        snowy = any("snowy" in words for words, _ in climate[m[1]].values())
        assert (m[2] == "Yes") == snowy, m[0]


def test_arithmetic_answers_are_right(docs):
    ops = {"+": int.__add__, "plus": int.__add__, "-": int.__sub__, "minus": int.__sub__,
           "×": int.__mul__, "times": int.__mul__}
    pattern = r"(\d+) (\+|-|×|plus|minus|times) (\d+) (?:=|is) (-?\d+)\."
    matches = [m for doc in docs if is_chat(doc) for m in re.finditer(pattern, doc)]
    assert len(matches) >= 20
    wrong = [m[0] for m in matches if ops[m[2]](int(m[1]), int(m[3])) != int(m[4])]
    assert not wrong, wrong[:5]
    # Word problems state the total twice: in words and in the sum that justifies it.
    totals = [m for doc in docs for m in re.finditer(r"has (\d+) \w+ (?:now|left), because .* = (\d+)\.", doc)]
    assert len(totals) >= 5
    assert all(m[1] == m[2] for m in totals)


def test_map_directions_agree_both_ways(docs):
    compass = ["east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east"]
    said = {}
    for doc in docs:
        for m in re.finditer(rf"({PLACE_NAMES}) is ({alternation(compass)}) of ({PLACE_NAMES})\.", doc):
            said.setdefault((m[1], m[3]), set()).add(m[2])
    assert len(said) >= 10
    assert all(len(dirs) == 1 for dirs in said.values()), said
    pairs = [(a, b) for a, b in said if (b, a) in said]
    assert pairs
    for a, b in pairs:
        (there,), (back,) = said[a, b], said[b, a]
        assert compass.index(back) == (compass.index(there) + 4) % 8, (a, there, b, back)


def test_train_routes_only_use_stations(docs):
    stations = {data.PLACES[k].name for k in data.RAILWAY}
    for doc in docs:
        for m in re.finditer(rf"took the train from ({PLACE_NAMES}) to ({PLACE_NAMES})", doc):
            assert {m[1], m[2]} <= stations, m[0]


# --- user data ---------------------------------------------------------------------------------

def test_txt_file_is_one_document_without_separator(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("Once upon a time.\n\nThe end.\n", encoding="utf-8")
    assert data.load_documents(str(path)) == ["Once upon a time.\n\nThe end.\n"]


def test_txt_file_splits_on_separator_and_drops_empty_pieces(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first\n<|endoftext|>\nsecond<|endoftext|><|endoftext|>\n  \n<|endoftext|>third", encoding="utf-8")
    assert data.load_documents(str(path)) == ["first", "second", "third"]


def test_jsonl_text_and_messages(tmp_path):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"text": "plain Zoë"}, ensure_ascii=False) + "\n\n"
                    + json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    assert data.load_documents(str(path)) == ["plain Zoë", render_chat(messages)]


def test_directory_is_read_recursively_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.txt").write_text("from b", encoding="utf-8")
    (tmp_path / "a.txt").write_text("from a", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "from c"}\n', encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert data.load_documents(str(tmp_path)) == ["from a", "from b", "from c"]


def test_builtin_source():
    assert data.load_documents("builtin", size=20_000, seed=4) == data.generate_builtin_corpus(20_000, seed=4)


def write(path, content: bytes | str):
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("make, expect", [
    (lambda d: d / "missing.txt", "no such file"),
    (lambda d: write(d / "notes.md", "x").parent, "no .txt or .jsonl"),
    (lambda d: write(d / "blank.txt", " \n\n\t"), "empty"),
    (lambda d: write(d / "latin1.txt", b"caf\xe9 ok"), "byte offset 3"),
    (lambda d: write(d / "bad.jsonl", '{"text": "ok"}\n{"text": \n'), "line 2"),
    (lambda d: write(d / "neither.jsonl", '{"title": "x"}\n'), "line 1"),
    (lambda d: write(d / "both.jsonl", '{"text": "x", "messages": []}\n'), "line 1"),
    (lambda d: write(d / "role.jsonl", '{"messages": [{"role": "wizard", "content": "x"}]}\n'), "line 1"),
    (lambda d: write(d / "notlist.jsonl", '{"messages": "hello"}\n'), "line 1"),
    (lambda d: write(d / "data.csv", "a,b\n"), "unsupported"),
])
def test_load_errors_name_the_path(tmp_path, make, expect):
    path = make(tmp_path)
    with pytest.raises(TinyLLMError) as err:
        data.load_documents(str(path))
    assert str(path) in str(err.value)
    assert expect in str(err.value)


# --- Hugging Face datasets ---------------------------------------------------------------------

CHAT = [{"role": "user", "content": "Where does Mira live?"},
        {"role": "assistant", "content": "Mira lives in Saltmere."}]


def test_saved_dataset_directory_text_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["first Zoë", "", "second"], "id": [1, 2, 3]}).save_to_disk(tmp_path / "ds")
    assert data.load_documents(str(tmp_path / "ds")) == ["first Zoë", "second"]


def test_saved_dataset_dict_uses_its_train_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["train row"]}),
                                   "test": datasets.Dataset.from_dict({"text": ["test row"]})})
    splits.save_to_disk(tmp_path / "dd")
    assert data.load_documents(str(tmp_path / "dd")) == ["train row"]


def test_parquet_messages_column_becomes_chatml(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "chats.parquet"
    datasets.Dataset.from_dict({"messages": [CHAT, CHAT[:1]], "text": ["ignored", "ignored"]}).to_parquet(path)
    assert data.load_documents(str(path)) == [render_chat(CHAT), render_chat(CHAT[:1])]


def test_arrow_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["from arrow"]}).save_to_disk(saved)
    (arrow,) = saved.glob("*.arrow")
    assert data.load_documents(str(arrow)) == ["from arrow"]


def test_dataset_without_text_or_messages_gets_one_line(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "wrong.parquet"
    datasets.Dataset.from_dict({"body": ["x"], "title": ["y"]}).to_parquet(path)
    with pytest.raises(TinyLLMError, match=r"no 'text' or 'messages' column \(it has: body, title\)") as err:
        data.load_documents(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_dataset_with_bad_messages_names_the_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    bad = [{"role": "wizard", "content": "x"}]
    datasets.Dataset.from_dict({"messages": [CHAT, bad]}).save_to_disk(tmp_path / "ds")
    with pytest.raises(TinyLLMError, match="row 1"):
        data.load_documents(str(tmp_path / "ds"))


def test_hf_name_that_cannot_be_loaded_gets_one_line(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a machine without the network
    with pytest.raises(TinyLLMError) as err:
        data.load_documents("hf:tinyllm-tests/no-such-dataset:validation")
    message = str(err.value)
    assert message.startswith("hf:tinyllm-tests/no-such-dataset:validation: datasets.load_dataset(")
    assert "split='validation'" in message and "network" in message and "\n" not in message


# --- split -------------------------------------------------------------------------------------

def test_split_is_disjoint_complete_ordered_and_deterministic():
    docs = [f"document number {i}" for i in range(1000)]
    train, val = data.split_documents(docs, 0.1, seed=5)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)
    assert train == [d for d in docs if d in set(train)] and val == [d for d in docs if d in set(val)]
    assert 50 <= len(val) <= 150
    assert data.split_documents(docs, 0.1, seed=5) == (train, val)
    assert data.split_documents(docs, 0.1, seed=6) != (train, val)


def test_split_keeps_a_document_on_its_side_when_others_are_added():
    docs = [f"doc {i}" for i in range(300)]
    _, val = data.split_documents(docs, 0.1)
    _, val_more = data.split_documents(docs + [f"new {i}" for i in range(300)], 0.1)
    assert set(val) <= set(val_more)


@pytest.mark.parametrize("n, fraction", [(2, 0.05), (3, 0.9), (10, 0.01)])
def test_split_never_leaves_a_side_empty(n, fraction):
    train, val = data.split_documents([f"d{i}" for i in range(n)], fraction)
    assert train and val and len(train) + len(val) == n


@pytest.mark.parametrize("docs, fraction", [([], 0.05), (["x"], 0.05), (["a", "b"], 0.0), (["a", "b"], 1.0)])
def test_split_rejects_bad_input(docs, fraction):
    with pytest.raises(TinyLLMError, match="no documents|too short to split|between 0 and 1"):
        data.split_documents(docs, fraction)


def test_one_document_is_split_by_position_at_a_word_boundary():
    text = " ".join(f"word{i}" for i in range(2000)) + "\n"
    (train,), (val,) = data.split_documents([text], 0.1)
    assert train + val == text
    assert abs(len(val) / len(text) - 0.1) < 0.01
    assert train.endswith(" ") and val.startswith("word")  # no word cut in two
    assert data.split_documents([text], 0.1, seed=9) == ([train], [val])  # by position: no seed in it


# --- corpus files --------------------------------------------------------------------------------

def test_write_corpus_round_trips(tmp_path, docs):
    tricky = ["  leading space", "trailing newline\n", "\nleading newline", "windows\r\nline", "a\n\n\nb"]
    corpus = docs[:200] + tricky
    path = tmp_path / "out" / "corpus.txt"
    data.write_corpus(corpus, path)
    assert data.load_documents(str(path)) == corpus
    assert sorted(p.name for p in path.parent.iterdir()) == ["corpus.txt"]  # no temporary left behind


def test_write_corpus_single_document_round_trips(tmp_path):
    path = tmp_path / "one.txt"
    data.write_corpus(["just one\n"], path)
    assert data.load_documents(str(path)) == ["just one\n"]


def test_write_corpus_refuses_existing_file_unless_forced(tmp_path):
    path = tmp_path / "corpus.txt"
    data.write_corpus(["old", "docs"], path)
    with pytest.raises(TinyLLMError, match="--force") as err:
        data.write_corpus(["new", "docs"], path)
    assert str(path) in str(err.value)
    assert data.load_documents(str(path)) == ["old", "docs"]
    data.write_corpus(["new", "docs"], path, force=True)
    assert data.load_documents(str(path)) == ["new", "docs"]


@pytest.mark.parametrize("docs, name", [(["has <|endoftext|> inside"], "c.txt"), (["ok", "   "], "c.txt"),
                                        ([], "c.txt"), (["ok"], "c.jsonl")])
def test_write_corpus_refuses_what_would_not_read_back(tmp_path, docs, name):
    with pytest.raises(TinyLLMError):
        data.write_corpus(docs, tmp_path / name)
    assert not list(tmp_path.iterdir())


# --- stats and tokens ----------------------------------------------------------------------------

def test_corpus_stats():
    chat = render_chat([{"role": "user", "content": "Hej"}, {"role": "assistant", "content": "Hallå"}])
    stats = data.corpus_stats(["Søren", chat, "plain"])
    assert stats == {"documents": 3, "characters": 5 + len(chat) + 5, "bytes": 6 + len(chat.encode()) + 5,
                     "chats": 1, "narratives": 2}


def test_encode_documents_appends_eot_after_each_document():
    tokens = data.encode_documents(["ab", "", "hello"], lambda texts: [[len(t)] for t in texts], eot_id=99)
    assert tokens.dtype == np.int32
    assert tokens.tolist() == [2, 99, 0, 99, 5, 99]


def test_training_targets_are_the_assistant_replies_of_chats():
    chat = render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi Zoë?"},
                        {"role": "assistant", "content": "Hello — yes."}, {"role": "user", "content": "And Łucja?"},
                        {"role": "assistant", "content": "She is shy.\n\nVery."}])
    story = "Mira rowed out.\n\nThe end."
    tokenizer = Tokenizer.train([chat, story] * 20, 300)
    tokens, targets = tokenize_for_training(tokenizer, [chat, story])
    assert tokens.tolist() == tokenize(tokenizer, [chat, story]).tolist()
    n_chat = len(tokenizer.encode(chat)) + 1
    trained = [tokens[i:i + 1] for i in range(n_chat) if targets[i]]
    assert tokenizer.decode(np.concatenate(trained).tolist()) == f"Hello — yes.{IM_END}She is shy.\n\nVery.{IM_END}"
    assert targets[n_chat:].all()  # a story and its <|endoftext|>: every token
    assert not targets[n_chat - 1]  # the chat's <|endoftext|>: not an answer
    _, everything = tokenize_for_training(tokenizer, [chat, story], train_on="all")
    assert everything.all()


def test_encode_documents_keeps_order_across_batches():
    docs = [str(i) for i in range(2500)]
    calls = []

    def encode_batch(texts):
        calls.append(len(texts))
        return [[int(t), int(t) + 1] for t in texts]

    tokens = data.encode_documents(docs, encode_batch, eot_id=-1)
    assert len(calls) > 1 and sum(calls) == len(docs)
    assert tokens.tolist() == [x for i in range(2500) for x in (i, i + 1, -1)]
    assert data.encode_documents([], encode_batch, eot_id=0).tolist() == []


def test_fact_questions_take_every_phrasing_in_turn():
    questions = fact_questions()
    for kind, of_kind in FACTS_BY_KIND.items():
        for held_out, phrasings in ((False, facts.KINDS[kind].questions), (True, facts.KINDS[kind].held_out)):
            asked = {q.messages[-1]["content"] for q in questions if q.fact.kind == kind and q.held_out == held_out}
            used = {p for p in phrasings if any(f.question(p) in asked for f in of_kind)}
            assert used == set(phrasings[:len(of_kind)]), (kind, held_out)
