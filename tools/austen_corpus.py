"""Real English prose for training and measuring: Jane Austen's six novels, from a Debian package.

Debian's `r-cran-janeaustenr` (MIT; the novels themselves are public domain, from Project
Gutenberg) ships the full texts of Sense and Sensibility, Pride and Prejudice, Mansfield Park,
Emma, Northanger Abbey and Persuasion: about 4 MB of prose no one here wrote, on any machine that
reaches Debian's archive. R is not needed: the package's data is an R lazy-load database (an index
`Rdata.rdx` and zlib records `Rdata.rdb`, each one R object in R's XDR serialization), and each
novel is a character vector of its printed lines, which this script reads directly.

    apt-get download r-cran-janeaustenr          # the .deb alone, without R (or: apt-get install)
    python tools/austen_corpus.py r-cran-janeaustenr_*.deb -o data/austen

writes
    data/austen/train/austen.txt   every chapter but the held-out ones, one document per chapter
                                   (separated by <|endoftext|>), for `tinyllm train --data data/austen/train`
    data/austen/heldout.txt        the first chapters of Persuasion (--heldout-chars), plain text,
                                   for `tinyllm bench --data data/austen/heldout.txt`
Hard-wrapped lines are joined into paragraphs (one per line, a blank line between them); the
title pages before each novel's first chapter are left out.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinyllm.chat import END_OF_TEXT  # noqa: E402
from tinyllm.errors import TinyLLMError  # noqa: E402
from tinyllm.fileio import atomic_write_text  # noqa: E402

INSTALLED = Path("/usr/lib/R/site-library/janeaustenr")
DATA_MEMBER = "usr/lib/R/site-library/janeaustenr/data/"
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
HELD_OUT = "persuasion"
CHAPTER = re.compile(r"^chapter\s+([0-9]+|[ivxlc]+)\.?$", re.IGNORECASE)

# R's serialization (src/main/serialize.c): the SEXP types the data holds, and the flag bits.
NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, STRSXP, VECSXP, REFSXP = 254, 1, 2, 9, 10, 13, 16, 19, 255
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10


class _Unserializer:
    """The subset of R's XDR format that character vectors and the lazy-load index use."""

    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where, self.refs = data, 0, where, []
        if data[:2] != b"X\n":
            raise TinyLLMError(f"{where}: not R's XDR serialization (starts {data[:2]!r})")
        self.pos = 2
        version = self.int()
        self.int(), self.int()  # the writer's R version, the oldest reader's
        if version == 3:
            name_length = self.int()
            self.pos += name_length  # the native encoding's name
        elif version != 2:
            raise TinyLLMError(f"{where}: R serialization version {version}, expected 2 or 3")

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def item(self):
        flags = self.int()
        kind = flags & 0xFF
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == SYMSXP:
            symbol = self.item()
            self.refs.append(symbol)
            return symbol
        if kind == LISTSXP:
            if flags & HAS_ATTR:
                self.item()  # a pairlist cell's own attributes: none that matter here
            tag = self.item() if flags & HAS_TAG else None
            head = (tag, self.item())
            rest = self.item()
            return [head] + (rest or [])
        if kind == CHARSXP:
            n = self.int()
            if n == -1:
                return None
            text = self.data[self.pos:self.pos + n].decode("utf-8")
            self.pos += n
            return text
        if kind in (LGLSXP, INTSXP):
            n = self.int()
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind in (STRSXP, VECSXP):
            value = [self.item() for _ in range(self.int())]
        else:
            raise TinyLLMError(f"{self.where}: R object type {kind} at byte {self.pos - 4} is not one this "
                               "reader knows (character vectors and lists only)")
        if flags & HAS_ATTR:
            attrs = dict(self.item())
            if "names" in attrs:
                return dict(zip(attrs["names"], value))
        return value


def _unserialize(data: bytes, where: str):
    return _Unserializer(data, where).item()


def _data_files(source: Path) -> tuple[bytes, bytes]:
    """(Rdata.rdx, Rdata.rdb) from the .deb file or the installed package directory."""
    if source.is_dir():
        return (source / "data" / "Rdata.rdx").read_bytes(), (source / "data" / "Rdata.rdb").read_bytes()
    blob = source.read_bytes()
    if blob[:8] != b"!<arch>\n":
        raise TinyLLMError(f"{source}: not a .deb (ar archive); pass the file `apt-get download "
                           "r-cran-janeaustenr` saved, or the installed package directory")
    pos, members = 8, {}
    while pos < len(blob):  # ar: 60-byte headers, name in the first 16, size at 48
        name, size = blob[pos:pos + 16].decode().strip().rstrip("/"), int(blob[pos + 48:pos + 58])
        members[name] = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    data = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if data is None:
        raise TinyLLMError(f"{source}: no data.tar member; is it a Debian package?")
    opener = {".xz": lzma.decompress, ".gz": gzip.decompress}.get(Path(next(
        k for k in members if k.startswith("data.tar"))).suffix, lambda b: b)
    with tarfile.open(fileobj=io.BytesIO(opener(data))) as tar:
        def read(name: str) -> bytes:
            for member in tar.getmembers():
                if member.name.lstrip("./") == DATA_MEMBER + name:
                    return tar.extractfile(member).read()
            raise TinyLLMError(f"{source}: has no {DATA_MEMBER}{name}; is it r-cran-janeaustenr?")
        return read("Rdata.rdx"), read("Rdata.rdb")


def read_novels(source: Path) -> dict[str, list[str]]:
    """Each novel's printed lines, by the package's variable name."""
    rdx, rdb = _data_files(source)
    index = _unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else zlib.decompress(rdx[4:]),
                         f"{source}: Rdata.rdx")
    novels = {}
    for name in NOVELS:
        if name not in index["variables"]:
            raise TinyLLMError(f"{source}: holds no novel {name!r} (has {', '.join(index['variables'])})")
        offset, length = index["variables"][name]
        record = rdb[offset:offset + length]
        novels[name] = _unserialize(zlib.decompress(record[4:]), f"{source}: {name}")
    return novels


def chapters(lines: list[str]) -> list[str]:
    """The novel's chapters as paragraphs joined from hard-wrapped lines; front matter dropped."""
    found, paragraphs, paragraph = [], None, []

    def end_paragraph():
        if paragraph and paragraphs is not None:
            paragraphs.append(" ".join(paragraph))
        paragraph.clear()

    for line in lines:
        line = (line or "").strip()
        if CHAPTER.match(line):
            end_paragraph()
            if paragraphs:
                found.append("\n\n".join(paragraphs))
            paragraphs = [line]
        elif not line:
            end_paragraph()
        elif line.upper().startswith("VOLUME ") and line.upper() == line:
            continue  # "VOLUME II" between chapters: part of no chapter's text
        else:
            paragraph.append(line)
    end_paragraph()
    if paragraphs:
        found.append("\n\n".join(paragraphs))
    return found


def split(novels: dict[str, list[str]], heldout_chars: int) -> tuple[list[str], list[str]]:
    """(training chapters, held-out chapters): the first chapters of Persuasion up to heldout_chars."""
    train, heldout = [], []
    for name in NOVELS:
        for chapter in chapters(novels[name]):
            if name == HELD_OUT and sum(map(len, heldout)) < heldout_chars:
                heldout.append(chapter)
            else:
                train.append(chapter)
    return train, heldout


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(exists=True, path_type=Path), default=INSTALLED)
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write train/austen.txt and heldout.txt into.")
@click.option("--heldout-chars", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Characters of Persuasion's first chapters kept out of training, for measuring.")
def main(source: Path, out: Path, heldout_chars: int) -> None:
    """Write Jane Austen's novels from SOURCE (the r-cran-janeaustenr .deb, or its installed
    directory [/usr/lib/R/site-library/janeaustenr]) as a training corpus and a held-out text."""
    try:
        train, heldout = split(read_novels(source), heldout_chars)
    except (TinyLLMError, OSError, zlib.error, lzma.LZMAError, tarfile.TarError) as e:
        raise click.ClickException(str(e)) from None
    (out / "train").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train" / "austen.txt", f"\n{END_OF_TEXT}\n".join(train) + "\n")
    atomic_write_text(out / "heldout.txt", "\n\n".join(heldout) + "\n")
    click.echo(f"{out}/train/austen.txt: {len(train)} chapters, {sum(map(len, train)):,} characters; "
               f"{out}/heldout.txt: {len(heldout)} chapters of Persuasion, {sum(map(len, heldout)):,} characters")


if __name__ == "__main__":
    main()
