"""The corpus: documents to train on, where they come from, and how they become a token stream.

Two sources. The built-in corpus is generated deterministically and offline: short stories and
ChatML conversations about one small, consistent world (the towns of the Amber Coast, a fixed cast
of twelve people with their homes, jobs, pets and habits), with question-answer chats on every fact
of it, so that a model of a few million parameters has something learnable to learn and its chat
answers can be checked against the world. User data is read from a `.txt` file, a `.jsonl` file, a
directory of them, or a Hugging Face dataset.

Where each part lives:
    world.py          the places, people and pets (and map and phrasing helpers)
    topic.py          the Topic record
    facts.py          the world's facts as questions (trained and held-out phrasings) and answers
    questions.py      topic-specific questions, answered from the world
    topics_*.py       the 60 topics, in three themed parts
    narratives.py     stories
    conversations.py  ChatML conversations
    builtin.py        the built-in corpus: TOPICS, the deck, the fact chats, the random streams
    sources.py        loading user data, the train/validation split, corpus files, stats, token streams
    hf_datasets.py    Hugging Face datasets as a source (saved directories, parquet/arrow, hf:NAME)
"""

from tinyllm.data.builtin import (BUILTIN_DEFAULT_SIZE, BUILTIN_QA_FRACTION, FACTS_TAG, TOPICS,
                                  generate_builtin_corpus, generate_builtin_corpus_with_topics)
from tinyllm.data.sources import (CORPUS_SUFFIXES, corpus_stats, encode_documents, load_documents, split_documents,
                                  write_corpus)
from tinyllm.data.topic import Asker, Topic
from tinyllm.data.world import CHARACTERS, DAY_TIMES, PEOPLE, PLACES, RAILWAY, SEASONS, Character, Pet, Place

__all__ = [
    "BUILTIN_DEFAULT_SIZE", "BUILTIN_QA_FRACTION", "FACTS_TAG", "TOPICS", "generate_builtin_corpus",
    "generate_builtin_corpus_with_topics",
    "CORPUS_SUFFIXES", "corpus_stats", "encode_documents", "load_documents", "split_documents", "write_corpus",
    "Asker", "Topic",
    "CHARACTERS", "DAY_TIMES", "PEOPLE", "PLACES", "RAILWAY", "SEASONS", "Character", "Pet", "Place",
]
