"""WordNet 3.0 (Debian `wordnet-base`): synsets from `/usr/share/wordnet/data.{noun,verb,adj,adv}`.

A data line is `offset lex_filenum ss_type w_cnt word lex_id ... p_cnt pointers... | gloss`
(wndb(5WN)); `w_cnt` is hexadecimal, the gloss is a definition followed by quoted usage
examples. Three corpora come from it:

- `gloss`: the synset's first lemma, and each usage example, paired with the definition
  (retrieval; the example rows are word-sense disambiguation in disguise);
- `synonyms`: the first lemma paired with each other lemma of the synset (pair data with score
  1, the form `trainer/data.py` takes for pair classification);
- `lexnames`: the definition labelled by its lexicographer file, e.g. `noun.animal`
  (classification).

Lemmas lose their underscores and the adjective position markers `(a)`, `(p)`, `(ip)` (format,
not content); nothing else is changed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from corpus.corpora.common import Row, sample_rows
from corpus.errors import KalmixError

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

# lexnames(5WN): the lexicographer file numbers of WordNet 3.0. Debian's wordnet-base does not
# ship the `lexnames` file itself, so the fixed list is spelled out here.
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    offset: str
    pos: str  # n, v, a, s (adjective satellite), r
    lexname: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.pos}{self.offset}"


def parse_line(line: str, path: Path, lineno: int) -> Synset:
    """One data line as a Synset; a malformed line is an error that names the file and line."""

    def bad(why: str) -> KalmixError:
        return KalmixError(
            f"{path}: line {lineno} is not a WordNet synset ({why}): {line[:80]!r}; "
            "the file is corrupt or truncated (reinstall wordnet-base)"
        )

    head, sep, gloss = line.partition("|")
    fields = head.split()
    if len(fields) < 6 or not sep:
        raise bad("too few fields" if len(fields) < 6 else "no '|' before the gloss")
    offset, lex, pos, w_hex = fields[:4]
    try:
        lex_num, w_cnt = int(lex), int(w_hex, 16)
    except ValueError:
        raise bad("lex_filenum or w_cnt is not a number") from None
    if not (offset.isdigit() and 0 <= lex_num < len(LEXNAMES) and pos in "nvasr" and w_cnt):
        raise bad("bad offset, lexicographer file or part of speech")
    words = fields[4 : 4 + 2 * w_cnt : 2]
    if len(words) != w_cnt or len(fields) < 5 + 2 * w_cnt:
        raise bad(f"{w_cnt} words announced, fewer present")
    lemmas = tuple(_MARKER.sub("", w).replace("_", " ") for w in words)
    gloss = gloss.strip()
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss[quote:])) if quote >= 0 else ()
    return Synset(offset, pos, LEXNAMES[lex_num], lemmas, definition, examples)


def read_synsets(folder: Path) -> list[Synset]:
    """Every synset of the four data files, in file order (license header lines notes)."""
    out: list[Synset] = []
    for name in DATA_FILES:
        path = folder / name
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise KalmixError(f"{path}: not UTF-8 text at byte {err.start}: corrupt file") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.startswith("  ") or not line.strip():
                continue  # the license header is indented by two spaces
            out.append(parse_line(line, path, lineno))
    return out


def gloss_rows(s: Synset) -> Iterator[Row]:
    if not s.definition:
        return
    meta = {"synset": s.id, "lexname": s.lexname}
    yield {
        "query": s.lemmas[0],
        "positive": s.definition,
        "language": "en",
        "meta": {**meta, "from": "lemma"},
    }
    for example in s.examples:
        yield {
            "query": example,
            "positive": s.definition,
            "language": "en",
            "meta": {**meta, "from": "example", "lemma": s.lemmas[0]},
        }


def synonym_rows(s: Synset) -> Iterator[Row]:
    for other in s.lemmas[1:]:
        yield {
            "query": s.lemmas[0],
            "positive": other,
            "score": 1.0,
            "language": "en",
            "meta": {"synset": s.id, "lexname": s.lexname},
        }


def lexname_rows(s: Synset) -> Iterator[Row]:
    if s.definition:
        yield {
            "query": s.definition,
            "label": s.lexname,
            "language": "en",
            "meta": {"synset": s.id, "lemmas": list(s.lemmas)},
        }


ROWS = {"gloss": gloss_rows, "synonyms": synonym_rows, "lexnames": lexname_rows}


def read(
    folder: Path,
    kind: str,
    limit: int | None = None,
    seed: int = 0,
    notes: Counter | None = None,
) -> Iterator[pa.Table]:
    """One of the three WordNet corpora (`kind`: gloss, synonyms, lexnames) as record tables."""
    return sample_rows(read_synsets(folder), ROWS[kind], limit, seed)


def count_synsets(folder: Path) -> int:
    """Synset lines in the data files: the row count of `lexnames`, cheap enough for a listing."""
    total = 0
    for name in DATA_FILES:
        with (folder / name).open("rb") as f:
            total += sum(1 for line in f if line[:1].isdigit())
    return total
