"""dictd databases (GCIDE, FOLDOC, FreeDict): `NAME.index` plus `NAME.dict.dz` in /usr/share/dictd.

The index has one line per headword: `headword TAB offset TAB length`, offset and length in
dictd's base64 digits (`A`-`Z`, `a`-`z`, `0`-`9`, `+`, `/`, most significant first). The data file
is a dictzip, which is a gzip file with a chunk table for random access; read whole here, since
the largest (FreeDict eng-deu) is 80 MB unpacked. Headwords `00-database-*` / `00database*` are
dictfmt's metadata (licence, URL), not entries, and are left out.

Every index line is an entry, also when several point at one definition (GCIDE's `Lifeless`
serves `Lifelessness` too): those near-copies are the raw source's, for dedup to find.

Corrupt input fails with a message naming the file and the entry: a bad index line, an entry
that points past the data (the typical truncated `.dict.dz`), an index line that is not UTF-8.
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa

from corpus.corpora.common import Row, count, paragraphs, sample_rows
from corpus.errors import KalmixError

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DIGIT = {c: i for i, c in enumerate(ALPHABET)}
_PRONUNCIATION = re.compile(r"\s*/[^/]*/")


def decode_number(text: str) -> int:
    """dictd's base64 number: `BBT7` -> 67323."""
    if not text:
        raise ValueError("empty number")
    value = 0
    for char in text:
        value = value * 64 + _DIGIT[char]  # KeyError for a character outside the alphabet
    return value


def is_metadata(headword: str) -> bool:
    return headword.startswith(("00-database", "00database"))


@dataclass(frozen=True)
class Entry:
    headword: str
    offset: int
    length: int
    line: int  # 1-based line of the index


class Dictionary:
    """One dictd database: its index entries and their texts."""

    def __init__(self, index: Path, data: Path | None = None) -> None:
        self.index_path = index
        stem = index.name.removesuffix(".index")
        if data is None:
            plain = index.with_name(stem + ".dict")
            data = plain if plain.exists() else index.with_name(stem + ".dict.dz")
        self.data_path = data
        self.name = stem

    @cached_property
    def entries(self) -> list[Entry]:
        """Index entries in file order, metadata headwords left out."""
        out = []
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            blob = self.index_path.read_bytes()
            line = blob[: err.start].count(b"\n") + 1
            raw = blob.split(b"\n")[line - 1].decode("utf-8", errors="replace")
            headword = raw.split("\t", 1)[0]
            raise KalmixError(
                f"{self.index_path}: entry {headword!r} (line {line}) is not UTF-8: the index "
                "is corrupt; reinstall its package"
            ) from None
        except FileNotFoundError:
            raise KalmixError(f"{self.index_path} not found") from None
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line:
                continue
            parts = line.split("\t")
            try:
                if len(parts) < 3:
                    raise ValueError
                entry = Entry(parts[0], decode_number(parts[1]), decode_number(parts[2]), lineno)
            except (ValueError, KeyError):
                raise KalmixError(
                    f"{self.index_path}: entry {parts[0]!r} (line {lineno}) is not 'headword TAB "
                    f"offset TAB length' in dictd base64: {line[:80]!r}; the index is corrupt, "
                    "reinstall its package"
                ) from None
            if not is_metadata(entry.headword):
                out.append(entry)
        return out

    @cached_property
    def data(self) -> bytes:
        """The unpacked data file; checked against the index so a truncated file names an entry."""
        raw, problem = _unpack(self.data_path)
        worst = max(self.entries, key=lambda e: e.offset + e.length, default=None)
        if worst is not None and worst.offset + worst.length > len(raw):
            first = min(
                (e for e in self.entries if e.offset + e.length > len(raw)), key=lambda e: e.line
            )
            why = problem or "the data ends early"
            raise KalmixError(
                f"{self.data_path}: entry {first.headword!r} (line {first.line} of "
                f"{self.index_path.name}) needs bytes {first.offset}-{first.offset + first.length}"
                f" but only {len(raw):,} bytes can be read ({why}): the file is truncated or "
                "corrupt; reinstall its package"
            )
        if problem:
            raise KalmixError(f"{self.data_path}: {problem}: the file is corrupt; reinstall it")
        return raw

    def text(self, entry: Entry, notes: Counter | None = None) -> str:
        """An entry's text. GCIDE has a few entries with stray Windows-1252 bytes (`\\x92` for
        an apostrophe) inside UTF-8: those bytes are read as Windows-1252, the rest as UTF-8,
        and counted, rather than failing the whole dictionary on real-world noise."""
        chunk = self.data[entry.offset : entry.offset + entry.length]
        try:
            return chunk.decode("utf-8")
        except UnicodeDecodeError:
            count(notes, "entries with non-UTF-8 bytes (read as Windows-1252)")
            return chunk.decode("utf-8", errors=_CP1252)


def _cp1252_bytes(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    bad = err.object[err.start : err.end]
    return bad.decode("cp1252", errors="replace"), err.end


_CP1252 = "kalmix-cp1252"
codecs.register_error(_CP1252, _cp1252_bytes)


def _unpack(path: Path) -> tuple[bytes, str | None]:
    """The bytes of a `.dict.dz` (gzip) or plain `.dict`, and what went wrong if it is damaged.

    Decompression streams, so a truncated or garbled file still yields what came before the
    damage; the caller says which entry that cuts off.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise KalmixError(f"{path} not found") from None
    if not path.name.endswith(".dz"):
        return blob, None
    unpacker = zlib.decompressobj(wbits=31)  # gzip header and CRC
    parts: list[bytes] = []
    step = 1 << 16  # small steps: a damaged file still yields most of what precedes the damage
    try:
        for start in range(0, len(blob), step):
            parts.append(unpacker.decompress(blob[start : start + step]))
            if unpacker.eof:
                break
        parts.append(unpacker.flush())
    except zlib.error as err:
        return b"".join(parts), f"gzip data is damaged ({err})"
    if not unpacker.eof:
        return b"".join(parts), "the gzip stream ends before its end marker"
    return b"".join(parts), None


def first_line(text: str) -> str:
    return text.lstrip("\n").split("\n", 1)[0].strip()


def definition_rows(
    d: Dictionary, language: str, notes: Counter | None = None
) -> Callable[[Entry], Iterator[Row]]:
    """Headword -> the whole entry as plain text (GCIDE, FOLDOC)."""

    def rows(entry: Entry) -> Iterator[Row]:
        text = d.text(entry, notes)
        body = paragraphs(text)
        query = entry.headword.strip() or first_line(text)
        if query and body:
            yield {
                "query": query,
                "positive": body,
                "language": language,
                "meta": {"dictionary": d.name, "headword": entry.headword},
            }

    return rows


def translation_rows(
    d: Dictionary, source: str, target: str, notes: Counter | None
) -> Callable[[Entry], Iterator[Row]]:
    """FreeDict: the entry's headword line (pronunciation dropped) -> the rest of the entry.

    The headword line spells the word as the dictionary does (`lay-on surface`), where the
    index holds a folded key (`layon surface`); the rest is the translations with their grammar
    tags, examples and cross-references, as FreeDict writes them.
    """

    def rows(entry: Entry) -> Iterator[Row]:
        text = d.text(entry, notes).lstrip("\n")
        head, _, rest = text.partition("\n")
        query = " ".join(_PRONUNCIATION.sub(" ", head).split()) or entry.headword.strip()
        body = paragraphs(rest)
        if not (query and body):
            count(notes, "entry without a translation")
            return
        yield {
            "query": query,
            "positive": body,
            "language": target,
            "meta": {
                "dictionary": d.name,
                "headword": entry.headword,
                "source_language": source,
                "target_language": target,
            },
        }

    return rows


def read_definitions(
    index: Path,
    language: str = "en",
    limit: int | None = None,
    seed: int = 0,
    notes: Counter | None = None,
) -> Iterator[pa.Table]:
    d = Dictionary(index)
    _ = d.data  # fail before the first row on a damaged file
    return sample_rows(d.entries, definition_rows(d, language, notes), limit, seed)


def read_translations(
    index: Path,
    source: str,
    target: str,
    limit: int | None = None,
    seed: int = 0,
    notes: Counter | None = None,
) -> Iterator[pa.Table]:
    d = Dictionary(index)
    _ = d.data
    return sample_rows(d.entries, translation_rows(d, source, target, notes), limit, seed)


def count_entries(index: Path) -> int:
    """Non-metadata lines of an index: the corpus' row count, without unpacking the data."""
    with index.open("rb") as f:
        return sum(
            1 for line in f if line.strip() and not line.startswith((b"00-database", b"00database"))
        )
