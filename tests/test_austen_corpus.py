"""tools/austen_corpus.py on a lazy-load database written here in R's XDR serialization (the
layout of src/main/serialize.c): the reader, the chapter split, the held-out text, bad input."""

from __future__ import annotations

import gzip
import struct
import sys
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import austen_corpus  # noqa: E402

HEADER = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"


def _int(value: int) -> bytes:
    return struct.pack(">i", value)


def _chars(text: str | None) -> bytes:
    if text is None:
        return _int(9) + _int(-1)  # NA_STRING
    data = text.encode("utf-8")
    return _int(9 | (8 << 12)) + _int(len(data)) + data  # levels 8: UTF-8


def _strings(values) -> bytes:
    return _int(16) + _int(len(values)) + b"".join(_chars(v) for v in values)


def _symbol(name: str) -> bytes:
    return _int(1) + _chars(name)


def _named_list(items: dict, body) -> bytes:
    """VECSXP with a names attribute: the pairlist (tag `names`, a STRSXP) after the elements."""
    attrs = _int(2 | (1 << 10)) + _symbol("names") + _strings(list(items)) + _int(254)
    return _int(19 | (1 << 9)) + _int(len(items)) + b"".join(body(v) for v in items.values()) + attrs


def _ints(values) -> bytes:
    return _int(13) + _int(len(values)) + b"".join(_int(v) for v in values)


def _package(directory: Path, novels: dict[str, list[str | None]]) -> Path:
    records, offsets, pos = [], {}, 0
    for name, lines in novels.items():
        blob = HEADER + _strings(lines)
        record = _int(len(blob)) + zlib.compress(blob)
        offsets[name], pos = [pos, len(record)], pos + len(record)
        records.append(record)
    index = {"variables": offsets, "references": {}}
    rdx = HEADER + _named_list(index, lambda v: _named_list(v, _ints) if v else _int(254))
    (directory / "data").mkdir(parents=True)
    (directory / "data" / "Rdata.rdb").write_bytes(b"".join(records))
    (directory / "data" / "Rdata.rdx").write_bytes(gzip.compress(rdx))
    return directory


def _novel(title: str, chapters: int) -> list[str | None]:
    lines = [title.upper(), "", "By Jane Austen", "", "VOLUME I", ""]
    for i in range(1, chapters + 1):
        lines += [f"CHAPTER {i}", "", f"{title} chapter {i} begins here and", "goes on over a wrapped line.",
                  None, f"A second paragraph of chapter {i}.", ""]
    return lines


@pytest.fixture
def package(tmp_path):
    return _package(tmp_path / "janeaustenr", {n: _novel(n, 3) for n in austen_corpus.NOVELS})


def test_reads_each_novel_as_its_lines(package):
    novels = austen_corpus.read_novels(package)
    assert list(novels) == list(austen_corpus.NOVELS)
    assert novels["emma"][:3] == ["EMMA", "", "By Jane Austen"] and None in novels["emma"]


def test_chapters_are_paragraphs_without_front_matter(package):
    chapters = austen_corpus.chapters(austen_corpus.read_novels(package)["emma"])
    assert len(chapters) == 3
    assert chapters[0] == ("CHAPTER 1\n\nemma chapter 1 begins here and goes on over a wrapped line.\n\n"
                           "A second paragraph of chapter 1.")


def test_writes_training_chapters_and_held_out_persuasion(package, tmp_path):
    out = tmp_path / "austen"
    result = CliRunner().invoke(austen_corpus.main, [str(package), "-o", str(out), "--heldout-chars", "100"])
    assert result.exit_code == 0, result.output
    from tinyllm.data import load_documents

    train = load_documents(str(out / "train"))
    assert len(train) == 5 * 3 + 2 and not any(d.startswith("CHAPTER 1\n\npersuasion") for d in train)
    heldout = (out / "heldout.txt").read_text()
    assert heldout.startswith("CHAPTER 1\n\npersuasion chapter 1") and "chapter 2" not in heldout


def test_bad_source_gets_one_line(tmp_path):
    fake = tmp_path / "fake.deb"
    fake.write_bytes(b"not an archive")
    result = CliRunner().invoke(austen_corpus.main, [str(fake), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and "not a .deb" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
