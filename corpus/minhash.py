"""MinHash signatures and LSH banding, vectorised over whole batches of documents.

Same numbers as datasketch 2.0: the permutations are taken from `datasketch.MinHash(num_perm,
seed)` itself (scheme "affine32": the 32-bit shingle hash is pre-mixed with MurmurHash3's fmix32,
then permuted by a*h+b mod 2^32 and the minimum kept), and the band/row split is datasketch's
`MinHashLSH` choice for the threshold (`_optimal_param`, equal false-positive and false-negative
weights). Row i of `signatures(texts)` equals `MinHash(num_perm, seed, hashfunc=H).hashvalues`
after `update`-ing it with each shingle of text i, where H is:

- `"poly"` (default): `corpus.text.poly_hash32`, a 64-bit polynomial hash whose values for all
  shingles of a batch come from prefix sums over one byte buffer (a few numpy passes), or
- `"sha1"`: datasketch's own default `sha1_hash32` (exactly `MinHash(num_perm, seed)`), which
  needs one hashlib call per shingle and is therefore several times slower.

What datasketch does per shingle in Python (`update`) or per document (`bulk`), this does per
batch: shingle spans and hashes for the whole batch, then for each permutation one multiply-add
over all shingles and one `minimum.reduceat` over the documents. Signatures live in a single
(documents x num_perm) uint32 matrix; no per-document Python object exists at any point.
Batches are independent, so `signatures_parallel` spreads them over a process pool.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from corpus.errors import KalmixError
from corpus.executor import default_workers, spawn_context
from corpus.text import FMIX32, fmix, fmix64, ngram_spans, shingle_text, span_hashes

HashName = Literal["poly", "sha1"]
HASHES: tuple[str, ...] = ("poly", "sha1")
_EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's initial value: the signature of an empty set
_CHUNK_SHINGLES = 1 << 18  # shingles per permutation pass: the temporaries stay in cache


@dataclass(frozen=True)
class MinHashConfig:
    num_perm: int = 128
    seed: int = 1
    ngram: int = 5
    hash: HashName = "poly"

    def __post_init__(self) -> None:
        if not 2 <= self.num_perm <= 1024:
            raise KalmixError(f"--num-perm must be between 2 and 1024, got {self.num_perm}")
        if not 1 <= self.ngram <= 64:
            raise KalmixError(f"--ngram must be between 1 and 64, got {self.ngram}")
        if self.hash not in HASHES:
            raise KalmixError(f"unknown shingle hash {self.hash!r}; one of: {', '.join(HASHES)}")


@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's (a, b) for this seed: taken from a MinHash so they cannot drift apart."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


# Weights of false positives and false negatives in datasketch's band/row optimisation.
# datasketch defaults to (0.5, 0.5), which at threshold 0.8 and 128 permutations makes a pair
# with Jaccard 0.9 a candidate only 93% of the time. Every candidate here is verified by its
# estimated Jaccard, so a false positive costs one comparison while a false negative is a
# duplicate left in: recall is worth more, and (0.1, 0.9) catches 99.9% of pairs at 0.9.
LSH_WEIGHTS = (0.1, 0.9)


@functools.lru_cache(maxsize=64)
def lsh_params(
    threshold: float, num_perm: int, weights: tuple[float, float] = LSH_WEIGHTS
) -> tuple[int, int]:
    """(bands, rows) exactly as `datasketch.MinHashLSH(threshold, num_perm, weights)` picks."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, weights[0], weights[1])


def fmix32(h: np.ndarray) -> np.ndarray:
    return fmix(h, FMIX32)


def _sha1_hashes(data: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    import hashlib

    raw = data.tobytes()
    sha1 = hashlib.sha1
    digests = b"".join(
        [sha1(raw[s:e]).digest()[:4] for s, e in zip(start.tolist(), end.tolist(), strict=True)]
    )
    return np.frombuffer(digests, dtype="<u4").astype(np.uint32)


@dataclass(frozen=True)
class MinHasher:
    """Signatures for batches of raw texts (picklable: it is what the pool workers run).

    The permutations travel with it, so worker processes never import datasketch.
    """

    config: MinHashConfig = MinHashConfig()
    a: np.ndarray = field(init=False, repr=False)
    b: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        a, b = permutations(self.config.num_perm, self.config.seed)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    def __call__(self, texts: pa.Array) -> np.ndarray:
        return self.signatures(texts)

    def shingle_hashes(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hash of every shingle (hashfunc output, before fmix) and shingles per text."""
        norm, char = shingle_text(pl.Series(texts))
        spans = ngram_spans(norm, char, self.config.ngram)
        if self.config.hash == "sha1":
            hv = _sha1_hashes(spans.data, spans.start, spans.end)
        else:
            hv = (span_hashes(spans.data, spans.start, spans.end) >> np.uint64(32)).astype(
                np.uint32
            )
        return hv, spans.counts

    def signatures(self, texts: pa.Array) -> np.ndarray:
        """(len(texts), num_perm) uint32; a text without shingles gets the empty signature."""
        hv, counts = self.shingle_hashes(texts)
        hv = fmix32(hv)
        a, b = self.a, self.b
        sig = np.full((counts.size, a.size), _EMPTY, dtype=np.uint32)
        docs = np.flatnonzero(counts > 0)
        if docs.size == 0:
            return sig
        bounds = np.concatenate(([0], np.cumsum(counts[docs])))
        # Docs are processed in chunks of about _CHUNK_SHINGLES shingles.
        cut = np.searchsorted(bounds, np.arange(0, bounds[-1], _CHUNK_SHINGLES), side="right") - 1
        cut = np.unique(np.concatenate((cut, [docs.size])))
        out = np.empty((a.size, docs.size), dtype=np.uint32)
        for lo, hi in zip(cut[:-1], cut[1:], strict=True):
            chunk = hv[bounds[lo] : bounds[hi]]
            seg = bounds[lo:hi] - bounds[lo]
            tmp = np.empty_like(chunk)
            for k in range(a.size):
                np.multiply(chunk, a[k], out=tmp)
                np.add(tmp, b[k], out=tmp)
                np.minimum.reduceat(tmp, seg, out=out[k, lo:hi])
        sig[docs] = out.T
        return sig


def signatures_parallel(
    texts: pa.Array | pa.ChunkedArray,
    config: MinHashConfig,
    workers: int = 0,
    batch_docs: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Signatures of all texts, batches spread over `workers` processes (0 = one per core).

    Batches are copied out and sent lazily, at most two per worker in flight, and results are
    written into one preallocated matrix in order, so memory stays at the texts plus the
    matrix. `on_batch(docs)` is called after each batch for a progress bar.
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    n = len(texts)
    sig = np.empty((n, config.num_perm), dtype=np.uint32)
    offsets = range(0, n, batch_docs)
    # A sliced Arrow array pickles its whole parent buffer: send compact copies.
    batches = (pa.concat_arrays([texts.slice(o, batch_docs)]) for o in offsets)
    workers = min(workers or default_workers(), len(offsets))
    hasher = MinHasher(config)
    results = map(hasher, batches) if workers <= 1 else _pool_map(hasher, batches, workers)
    for offset, part in zip(offsets, results, strict=True):
        sig[offset : offset + part.shape[0]] = part
        if on_batch is not None:
            on_batch(part.shape[0])
    return sig


def _pool_map(
    fn: Callable[[pa.Array], np.ndarray], items: Iterator[pa.Array], workers: int
) -> Iterator[np.ndarray]:
    """`map(fn, items)` on a spawn process pool, in order, at most 2 items per worker queued."""
    with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def band_keys(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    """A 64-bit key per document for one band (its `rows` hash values mixed together)."""
    key = np.full(sig.shape[0], np.uint64(band + 1), dtype=np.uint64)
    for col in range(band * rows, (band + 1) * rows):
        key = fmix64(key * np.uint64(0x9E3779B97F4A7C15) + sig[:, col].astype(np.uint64))
    return key


def bucket_pairs(frame: pl.DataFrame, max_group: int = 64) -> pl.DataFrame:
    """Candidate pairs `left < right` among rows sharing an LSH bucket (same `band` and `key`).

    `frame` has columns band, key, row and must hold every row of each (band, key) it holds:
    one band of a whole corpus (`candidate_pairs`), or one hash partition of all bands (the
    Ray Data shuffle in `filters.dedup`). Within a bucket of at most `max_group` rows every
    pair is a candidate, as with `MinHashLSH.query`; a larger bucket (boilerplate repeated
    thousands of times) links each member to its first row instead, so pairs stay linear in
    its size. A pair may come out more than once (several bands).
    """
    bucket = ("band", "key")
    frame = (
        frame.filter(pl.len().over(bucket) > 1)
        .sort("band", "key", "row")
        .with_columns(
            rank=pl.int_range(pl.len()).over(bucket),
            size=pl.len().over(bucket),
            first=pl.col("row").first().over(bucket),
        )
    )
    small = frame.filter(pl.col("size") <= max_group).select("band", "key", "row", "rank")
    pairs = (
        small.join(small, on=bucket, suffix="_r")
        .filter(pl.col("rank") < pl.col("rank_r"))
        .select(left=pl.col("row"), right=pl.col("row_r"))
    )
    star = frame.filter((pl.col("size") > max_group) & (pl.col("rank") > 0)).select(
        left=pl.col("first"), right=pl.col("row")
    )
    return pl.concat([pairs, star])


def unique_pairs(found: list[pl.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """Each pair once, sorted by (left, right), as two int64 arrays."""
    found = [f for f in found if f.height]
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    unique = pl.concat(found).unique(maintain_order=False).sort("left", "right")
    return unique["left"].to_numpy().astype(np.int64), unique["right"].to_numpy().astype(np.int64)


def candidate_pairs(
    sig: np.ndarray, rows: np.ndarray, bands: int, band_rows: int, max_group: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (left < right) that share at least one LSH band, each pair once.

    `rows` are the row indices of `sig` to index (documents without shingles are left out).
    Grouping is polars group-by work (`bucket_pairs`), band by band, so memory is bounded by
    one band.
    """
    rows = np.asarray(rows, dtype=np.int64)
    found = [
        bucket_pairs(
            pl.DataFrame(
                {"band": band, "key": band_keys(sig[rows], band, band_rows), "row": rows},
                schema={"band": pl.Int32, "key": pl.UInt64, "row": pl.Int64},
            ),
            max_group,
        )
        for band in range(bands)
    ]
    return unique_pairs(found)


def estimated_jaccard(
    sig: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 65536
) -> np.ndarray:
    """Share of equal hash values for each pair: datasketch's `MinHash.jaccard`."""
    out = np.empty(len(left), dtype=np.float32)
    for lo in range(0, len(left), chunk):
        hi = lo + chunk
        out[lo:hi] = (sig[left[lo:hi]] == sig[right[lo:hi]]).mean(axis=1)
    return out
