"""Exact duplicates: records whose chosen fields are equal after normalisation.

Normalised text is NFKC, lower case, whitespace collapsed (`corpus.text.normalize`). Rows
are grouped by that text itself in polars (a hash group-by that compares the strings, so a
hash collision can never merge two different texts); the cluster id of a row is the first row
with the same text. Rows with no text in the chosen fields are never duplicates of each other:
an empty field says nothing about the record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow as pa

from corpus.executor import default_workers
from corpus.operator import OpResult, split_rows
from corpus.text import FIELD_SEPARATOR, normalize, record_text
from filters.clusters import KeeperRule, choose_keepers, duplicate_details

REASON = "exact_duplicate"
THREAD_SLICE = 20_000  # rows below which one thread normalises everything


def exact_clusters(texts: pa.Array | pl.Series) -> np.ndarray:
    """Cluster id (smallest row with the same normalised text) of every text; empty: own row.

    Normalisation runs on slices in threads, one per core: its kernels (Arrow, numpy, polars)
    release the GIL.
    """
    texts = texts.to_arrow() if isinstance(texts, pl.Series) else texts
    step = max(THREAD_SLICE, -(-len(texts) // default_workers()))
    slices = [texts.slice(o, step) for o in range(0, len(texts), step)] or [texts]
    with ThreadPoolExecutor(len(slices)) as pool:
        norm = pa.chunked_array(list(pool.map(normalize, slices)), pa.large_string())
    frame = pl.DataFrame({"norm": pl.Series(norm)}).with_row_index("row")
    ids = frame.select(
        pl.when(pl.col("norm") == "")
        .then(pl.col("row"))
        .otherwise(pl.col("row").min().over("norm"))
    ).to_series()
    return ids.to_numpy().astype(np.int64)


def exact_dedup(
    table: pa.Table,
    fields: Sequence[str] = ("query", "positive"),
    rule: KeeperRule | None = None,
) -> OpResult:
    """Drop all but one record of every group of exact duplicates (keeper by `rule`)."""
    start = time.perf_counter()
    rule = rule or KeeperRule(fields=tuple(fields))
    texts = record_text(table, fields, separator=FIELD_SEPARATOR)
    keepers = choose_keepers(table, exact_clusters(texts), rule)
    details = duplicate_details(table, keepers, np.ones(table.num_rows))
    kept, removed = split_rows(table, keepers.keep, REASON, details)
    stats = {
        "rows": table.num_rows,
        "exact_duplicates": int(keepers.dropped.size),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return OpResult(kept, removed, stats)
