"""Hugging Face `datasets` as a corpus source: a saved dataset directory, parquet or arrow files, hf:NAME.

A dataset gives one document per row, from its `messages` column (chats, rendered as ChatML like a
.jsonl line) or else its `text` column; `sources.py` turns the rows into documents. `datasets` is
imported only when such a source is used, and its progress bars and the Hub client's retry
warnings are kept off the terminal, so a bad source prints one line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tinyllm.errors import TinyLLMError

HF_PREFIX = "hf:"
DATASET_SUFFIXES = (".parquet", ".arrow")
COLUMNS = ("messages", "text")  # in order of preference


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def load_dataset_column(source: str) -> tuple[str, list]:
    """(column name, its values) of the dataset `source` names: "messages" or "text"."""
    dataset = _open(source)
    names = dataset.column_names
    column = next((c for c in COLUMNS if c in names), None)
    if column is None:
        raise TinyLLMError(f"{source}: the dataset has no 'text' or 'messages' column (it has: "
                           f"{', '.join(names) or 'none'}); rename one with Dataset.rename_column")
    return column, dataset[column]


@contextlib.contextmanager
def _quiet(datasets):
    """No progress bars and no retry warnings from `datasets` and the Hub client while loading."""
    from huggingface_hub.utils import logging as hub_logging

    was_enabled = datasets.is_progress_bar_enabled()
    levels = datasets.logging.get_verbosity(), hub_logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(levels[0])
        hub_logging.set_verbosity(levels[1])
        if was_enabled:
            datasets.enable_progress_bars()


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _open(source: str):
    import datasets

    with _quiet(datasets):
        if source.startswith(HF_PREFIX):
            name, _, split = source[len(HF_PREFIX):].partition(":")
            if not name:
                raise TinyLLMError(f"{source}: name a dataset, as in hf:NAME or hf:NAME:SPLIT")
            split = split or "train"
            try:
                return datasets.load_dataset(name, split=split)
            except Exception as e:  # no network, no such dataset or split: all surface as one line
                raise TinyLLMError(f"{source}: datasets.load_dataset({name!r}, split={split!r}) failed "
                                   f"({_first_line(e)}); check the name and the network, or save the dataset "
                                   "with save_to_disk and pass its directory") from None
        path = Path(source)
        try:
            if path.is_dir():
                loaded = datasets.load_from_disk(str(path))
            else:
                builder = path.suffix.lower().lstrip(".")  # datasets' "parquet" and "arrow" builders
                return datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # damaged or foreign files
            raise TinyLLMError(f"{path}: cannot read it as a Hugging Face dataset ({_first_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            return loaded["train"]
        if len(loaded) == 1:
            return next(iter(loaded.values()))
        raise TinyLLMError(f"{path}: a dataset with splits {', '.join(loaded)} and none called 'train'; "
                           "save the split to train on by itself")
    return loaded
