"""Text helpers shared by the cleaning operators and synthesis: fields, normalisation, scripts,
n-grams.

One definition of each, so that a filter and a synthesis check agree on what "the same text" or
"written in Chinese" means. Everything here works on whole Arrow/polars columns or numpy arrays
at once; nothing loops over records in Python, so the operators built on it stay fast and
memory-bounded (`normalized` and `has_cjk` take a few Python strings, for one LLM answer).

- `record_text`: the text of the chosen fields of each record (validated: unknown or non-text
  fields are a `KalmixError`, never a traceback).
- `normalize` (NFKC, lower case, whitespace collapsed) defines an exact duplicate; with
  `tokens=True` punctuation also becomes space, for shingles and n-gram overlap.
- `cjk_share` / `script_counts` / `has_cjk`: which script a record is written in, so shingles
  are word n-grams for space-separated scripts and character n-grams for Chinese/Japanese/Korean
  and mixed text, decided per record, and a CJK example can be told from an English one.
- `ngram_spans` + `span_hashes`: the n-grams of a batch of texts as byte spans of one UTF-8
  buffer, and a 64-bit polynomial hash of each span computed from prefix sums (no per-n-gram
  Python call). `poly_hash64` is the same function on one `bytes` value, so any consumer that
  takes a per-item hash function (datasketch's `MinHash(hashfunc=...)`) reproduces it exactly.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from corpus.errors import KalmixError

# Chinese, Japanese and Korean scripts (Han also covers Japanese kanji and Korean hanja).
CJK_PATTERN = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"
CJK_LANGUAGES = ("zh", "ja", "ko")  # the ISO codes of the languages written in those scripts
# A record whose letters are at least this share CJK is shingled by characters: CJK text has
# no spaces, so "words" would be whole clauses; a mixed record is safer by characters too.
CJK_CHAR_SHARE = 0.1
FIELD_SEPARATOR = "\x1f"  # joins fields for exact matching: "a b"+"c" differs from "a"+"b c"


def record_text(table: pa.Table, fields: Sequence[str], separator: str = " ") -> pl.Series:
    """The chosen fields of every record as one string (nulls count as empty).

    List-of-string fields (`negatives`) are joined by spaces. Unknown fields and fields that are
    not text raise a `KalmixError` naming the text fields the table has.
    """
    if not fields:
        raise KalmixError("no fields given: name at least one text field, e.g. --fields query")
    text_fields = [f.name for f in table.schema if _is_text(f.type)]
    parts: list[pl.Expr] = []
    for name in fields:
        if name not in table.column_names:
            raise KalmixError(
                f"field {name!r} does not exist; text fields of this data: {', '.join(text_fields)}"
            )
        if name not in text_fields:
            raise KalmixError(
                f"field {name!r} is not text ({table.schema.field(name).type}); "
                f"text fields: {', '.join(text_fields)}"
            )
        col = pl.col(name)
        if not pa.types.is_string(table.schema.field(name).type):
            col = col.list.join(" ")
        parts.append(col.fill_null(""))
    frame = pl.from_arrow(table.select(list(dict.fromkeys(fields))), rechunk=False)
    joined = parts[0] if len(parts) == 1 else pl.concat_str(parts, separator=separator)
    return frame.select(joined.alias("text")).to_series()


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return True
    return pa.types.is_list(dtype) and pa.types.is_string(dtype.value_type)


# Token form: every ASCII byte that is not a letter or digit becomes a space (a byte map);
# bytes >= 0x80 (inside multi-byte UTF-8 sequences) map to themselves.
_TOKEN_MAP = np.arange(256, dtype=np.uint8)
_TOKEN_MAP[[b for b in range(128) if not chr(b).isalnum()]] = 0x20
# What byte-level work cannot see: non-ASCII whitespace (exact) / non-ASCII non-word characters
# (tokens). Few matches per text, so this regex runs only on non-ASCII texts and is cheap.
_NON_ASCII_SEPARATORS = {False: r"[\s&&[^\x00-\x7F]]+", True: r"[\W&&[^\x00-\x7F]]+"}
# Token form drops apostrophes instead of splitting on them: "it's" and "its" are one token.
_APOSTROPHE = 0x27
_NON_ASCII_APOSTROPHES = "[\u2019\u02bc]"


def normalize(texts: pa.Array | pa.ChunkedArray | pl.Series, tokens: bool = False) -> pa.Array:
    """Normalised texts as a large_string array (null becomes the empty string).

    Exact form (`tokens=False`): Unicode NFKC, lower case, every whitespace run one space, ends
    stripped. Token form (`tokens=True`): the same with apostrophes dropped and other
    punctuation and `_` turned into spaces, so only word characters separated by single spaces
    remain ("It's a pre-order!" -> "its a pre order").

    ASCII texts (NFKC leaves them unchanged) only go through Arrow's `ascii_lower` and numpy
    byte work; only non-ASCII texts pay for Unicode lower-casing (polars), and only those that
    fail CPython's quick NFKC check for NFKC itself (polars' implementation, faster than
    CPython's on text that does need changes). Whitespace: see `_collapse_whitespace` (exact)
    and `_squeeze_spaces` (tokens).
    """
    if isinstance(texts, pl.Series):
        texts = texts.to_arrow()
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.fill_null(pc.cast(texts, pa.large_string()), "")
    non_ascii = ~pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    if non_ascii.any():
        rows = np.flatnonzero(non_ascii)
        subset = pc.take(texts, rows)
        fixed_series = pl.Series(subset)
        unnormalised = np.flatnonzero(
            [not unicodedata.is_normalized("NFKC", t) for t in subset.to_pylist()]
        )
        if unnormalised.size:
            fixed = fixed_series.gather(unnormalised).str.normalize("NFKC")
            fixed_series = fixed_series.scatter(unnormalised, fixed)
        fixed_series = fixed_series.str.to_lowercase()
        if tokens:
            fixed_series = fixed_series.str.replace_all(_NON_ASCII_APOSTROPHES, "")
        fixed_series = fixed_series.str.replace_all(_NON_ASCII_SEPARATORS[tokens], " ")
        texts = pc.replace_with_mask(
            texts, pa.array(non_ascii), pc.cast(fixed_series.to_arrow(), pa.large_string())
        )
    texts = pc.ascii_lower(texts)
    data, offsets = utf8_buffer(texts)
    data = data[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    if not tokens:
        return _collapse_whitespace(texts, data, offsets)
    data, offsets = _compact(data, offsets, data == _APOSTROPHE)
    return _squeeze_spaces(np.take(_TOKEN_MAP, data), offsets)


def normalized(texts: Sequence[str], *, tokens: bool = False) -> list[str]:
    """`normalize` for a few Python strings (one LLM answer's fields, say), as Python strings."""
    return normalize(pa.array(list(texts), pa.large_string()), tokens=tokens).to_pylist()


def _collapse_whitespace(texts: pa.Array, data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Exact form's whitespace rule, applied only to the texts that need it.

    Most texts have single spaces and no tabs, newlines or padding: fast literal searches
    (polars) and one compare over the bytes for control characters find the others, and only
    those go through the regex.
    """
    series = pl.Series(texts)
    needs = (
        series.str.contains("  ", literal=True)
        | series.str.starts_with(" ")
        | series.str.ends_with(" ")
    ).to_numpy()
    control = np.flatnonzero(data < 0x20)
    needs[np.searchsorted(offsets, control, side="right") - 1] = True
    if not needs.any():
        return texts
    rows = np.flatnonzero(needs)
    fixed = series.gather(rows).str.replace_all(r"[\s\x1c-\x1f]+", " ").str.strip_chars(" ")
    fixed_arrow = fixed.to_arrow(compat_level=pl.CompatLevel.oldest())
    return pc.replace_with_mask(texts, pa.array(needs), fixed_arrow)


def _compact(
    data: np.ndarray, offsets: np.ndarray, drop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the bytes marked in `drop` and shift the text offsets to match.

    Arrow's filter kernel does the copy (several times faster than numpy's boolean indexing).
    """
    dropped = np.flatnonzero(drop)
    if dropped.size == 0:
        return data, offsets
    bits = pa.py_buffer(np.packbits(~drop, bitorder="little"))  # pa.array(bool) is slow
    mask = pa.BooleanArray.from_buffers(pa.bool_(), data.size, [None, bits])
    kept = pc.filter(pa.array(data), mask).to_numpy()
    return kept, offsets - np.searchsorted(dropped, offsets)


def _squeeze_spaces(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """Drop leading, trailing and repeated spaces of every text in a UTF-8 buffer.

    A space is dropped when it follows a space or starts its text; a text can then still end in
    one space, found from the few texts whose last byte is a space. The buffer is then
    compacted once.
    """
    n = offsets.size - 1
    space = data == 0x20
    drop = np.empty(data.size, dtype=bool)
    if data.size:
        drop[0] = space[0]
        np.logical_and(space[1:], space[:-1], out=drop[1:])
        starts = offsets[:-1][np.diff(offsets) > 0]
        drop[starts] = space[starts]
        ends = offsets[1:][np.diff(offsets) > 0] - 1
        for end in ends[space[ends]].tolist():  # texts ending in spaces: drop the whole run
            run = end
            while run >= 0 and space[run]:
                drop[run] = True
                run -= 1
    data, offsets = _compact(data, offsets, drop)
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(np.ascontiguousarray(data))
    )


def cjk_share(texts: pa.Array) -> np.ndarray:
    """Share of each normalised text's non-space characters that are Chinese/Japanese/Korean.

    Only non-ASCII texts can contain CJK, so the regex runs on those alone.
    """
    share = np.zeros(len(texts), dtype=np.float64)
    non_ascii = ~pc.string_is_ascii(pc.fill_null(texts, "")).to_numpy(zero_copy_only=False)
    if non_ascii.any():
        rows = np.flatnonzero(non_ascii)
        sub = pl.Series(pc.take(texts, rows))
        frame = pl.DataFrame({"t": sub}).select(
            cjk=pl.col("t").str.count_matches(CJK_PATTERN),
            chars=pl.col("t").str.len_chars() - pl.col("t").str.count_matches(" ", literal=True),
        )
        share[rows] = (frame["cjk"] / frame["chars"].clip(lower_bound=1)).to_numpy()
    return share


def has_cjk(texts: Sequence[str]) -> np.ndarray:
    """Whether each text has at least one Chinese, Japanese or Korean character."""
    found = pl.Series(list(texts), dtype=pl.String).str.contains(CJK_PATTERN)
    return found.fill_null(False).to_numpy()


def script_counts(texts: pl.Series) -> pl.DataFrame:
    """Letters per script (Han, kana, Hangul) and in all, for each text: the CJK language check."""
    return pl.DataFrame({"t": texts}).select(
        han=pl.col("t").str.count_matches(r"\p{Han}").fill_null(0),
        kana=pl.col("t").str.count_matches(r"[\p{Hiragana}\p{Katakana}]").fill_null(0),
        hangul=pl.col("t").str.count_matches(r"\p{Hangul}").fill_null(0),
        letters=pl.col("t").str.count_matches(r"\p{L}").fill_null(0),
    )


def shingle_text(texts: pa.Array | pl.Series) -> tuple[pa.Array, np.ndarray]:
    """Token-normalised texts (spaces dropped for CJK/mixed records) and the char-mode mask."""
    norm = normalize(texts, tokens=True)
    char = cjk_share(norm) >= CJK_CHAR_SHARE
    if char.any():
        rows = np.flatnonzero(char)
        joined = pc.replace_substring(pc.take(norm, rows), " ", "")
        norm = pc.replace_with_mask(norm, pa.array(char), joined)
    return norm, char


@dataclass
class Spans:
    """N-grams of a batch as byte spans [start, end) of `data`; `doc` says whose each one is."""

    data: np.ndarray  # uint8, the batch's UTF-8 bytes
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    doc: np.ndarray  # int64, index of the text in the batch
    counts: np.ndarray  # int64, n-grams per text (0 for an empty text)


def utf8_buffer(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of all texts as one array and the int64 offsets of each text."""
    texts = pc.cast(texts, pa.large_string()) if texts.type != pa.large_string() else texts
    texts = pc.fill_null(texts, "")
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    _, offsets_buf, data_buf = texts.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[
        texts.offset : texts.offset + len(texts) + 1
    ]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8)
        if data_buf is not None
        else np.zeros(0, dtype=np.uint8)
    )
    return data, offsets


def ngram_spans(texts: pa.Array, char_mode: np.ndarray, n: int) -> Spans:
    """Word n-grams (text units split by single spaces) or character n-grams (code points).

    A text with fewer than `n` units yields one n-gram, the whole text; an empty text none. The
    texts must be normalised (single spaces, stripped). An n-gram is always a contiguous byte
    span, so its bytes equal `" ".join(words[i:i+n]).encode()` or `text[i:i+n].encode()`.
    """
    if n < 1:
        raise KalmixError(f"n-gram size must be at least 1, got {n}")
    data, offsets = utf8_buffer(texts)
    base = offsets[0]
    starts_of_text, ends_of_text = offsets[:-1] - base, offsets[1:] - base
    data = data[base : offsets[-1]]
    lengths = ends_of_text - starts_of_text
    byte_char = np.repeat(np.asarray(char_mode, dtype=bool), lengths)
    prev_space = np.empty(data.size, dtype=bool)
    if data.size:
        prev_space[0] = True
        prev_space[1:] = data[:-1] == 0x20
    prev_space[starts_of_text[lengths > 0]] = True  # the first byte of a text starts a unit
    is_space = data == 0x20
    unit_start = np.where(byte_char, (data & 0xC0) != 0x80, prev_space & ~is_space)
    starts = np.flatnonzero(unit_start)
    doc_of_unit = np.searchsorted(ends_of_text, starts, side="right")
    units = np.bincount(doc_of_unit, minlength=len(lengths)).astype(np.int64)
    # A unit ends where the next one starts (less the separating space for words), or at the
    # end of its text.
    nxt = np.empty_like(starts)
    nxt[:-1] = starts[1:]
    last = np.ones(starts.size, dtype=bool)
    if starts.size:
        last[:-1] = doc_of_unit[1:] != doc_of_unit[:-1]
    char_unit = byte_char[starts] if starts.size else np.zeros(0, dtype=bool)
    ends = np.where(last, ends_of_text[doc_of_unit], np.where(char_unit, nxt, nxt - 1))
    counts = np.where(units > 0, np.maximum(units - n + 1, 1), 0)
    unit_offset = np.concatenate(([0], np.cumsum(units)[:-1]))
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    first_gram = np.concatenate(([0], np.cumsum(counts)[:-1]))
    k = np.arange(doc.size, dtype=np.int64) - first_gram[doc]
    first_unit = unit_offset[doc] + k
    last_unit = first_unit + np.minimum(units[doc], n) - 1
    return Spans(data, starts[first_unit], ends[last_unit], doc, counts)


# --- the 64-bit polynomial span hash -------------------------------------------------------

_MASK64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2^64
_Q = pow(_P, -1, 1 << 64)
# MurmurHash3's finalisers: (shift, multiplier, shift, multiplier, shift), one dtype each.
FMIX32 = tuple(np.uint32(v) for v in (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16))
FMIX64 = tuple(np.uint64(v) for v in (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33))
_powers_lock = threading.Lock()
_powers: dict[int, np.ndarray] = {}


def _power_table(base: int, size: int) -> np.ndarray:
    """base**j mod 2^64 for j < size (cached per process, grown on demand)."""
    with _powers_lock:
        table = _powers.get(base)
        if table is None or table.size < size:
            grown = max(size, 1 << 20, 0 if table is None else 2 * table.size)
            table = np.full(grown, np.uint64(base), dtype=np.uint64)
            table[0] = 1
            np.cumprod(table, out=table)  # wraps modulo 2^64, as intended
            _powers[base] = table
        return table[:size]


def fmix(h: np.ndarray, constants: tuple[np.integer, ...]) -> np.ndarray:
    """A MurmurHash3 finaliser (`FMIX32` or `FMIX64`): spreads a hash over all its bits."""
    s1, m1, s2, m2, s3 = constants
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def fmix64(h: np.ndarray) -> np.ndarray:
    """The 64-bit finaliser: spreads the polynomial hash over all bits."""
    return fmix(h, FMIX64)


def span_hashes(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """`poly_hash64(data[s:e])` for every span, from prefix sums over the whole buffer.

    With G[i] = sum_{j<i} data[j] * Q^j (Q = P^-1 mod 2^64), the Horner hash of data[s:e] is
    P^(e-1) * (G[e] - G[s]); every step is a numpy pass over the buffer or the spans.
    """
    size = data.size + 1
    prefix = np.zeros(size, dtype=np.uint64)
    if data.size:
        np.cumsum(data.astype(np.uint64) * _power_table(_Q, data.size), out=prefix[1:])
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    p_pow = _power_table(_P, size)
    horner = p_pow[np.maximum(end - 1, 0)] * (prefix[end] - prefix[start])
    return fmix64(horner + (end - start).astype(np.uint64))


def poly_hash64(b: bytes) -> int:
    """The span hash of one bytes value (reference implementation, used with datasketch)."""
    h = 0
    for byte in b:
        h = (h * _P + byte) & _MASK64
    return int(fmix64(np.array([(h + len(b)) & _MASK64], dtype=np.uint64))[0])


def poly_hash32(b: bytes) -> int:
    """High 32 bits of `poly_hash64`: the default shingle hash of MinHash dedup."""
    return poly_hash64(b) >> 32
