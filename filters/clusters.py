"""Duplicate clusters and the keeper rule, shared by every dedup operator (exact, MinHash, semantic).

A dedup operator finds pairs of rows it believes are duplicates (same normalised hash, an LSH
candidate pair whose estimated Jaccard passes, two embeddings above a cosine threshold). This
module turns those pairs into clusters (connected components: union-find, done in one sparse
graph pass by scipy instead of a Python loop) and picks one keeper per cluster, so every dedup
flavour removes rows by the same documented rule:

1. a row whose `priority_column` value comes earlier in `priority` wins (rows whose value is
   not listed rank after every listed one) — e.g. prefer a curated source over a scraped one;
2. then `prefer`:
   - `"cleanest"` (`kalmix dedup`'s default, for exact and near duplicates alike): the least
     noisy copy, by
     a. the least upper-case share (`upper_case_tenths`): upper-case letters among the cased
        letters of `fields`, in tenths (0-10), so an upper-cased or shouting copy loses while
        ordinary differences of capitalisation (a proper noun, a sentence start) do not count;
     b. then the least whitespace noise (`whitespace_noise`): leading/trailing whitespace, runs
        of two or more spaces or tabs, and tabs;
     length plays no part: a copy with a few words edited or added is no better for being
     longer;
   - `"longest"`: the row with the most characters in `fields` (a truncated near duplicate
     loses, but so does a clean original against its double-spaced or upper-cased-and-padded
     copy, and against a copy with boilerplate added);
   - `"first"`: no text test;
3. then the earliest row (input order), so the result is deterministic.

`python -m benchmarks.dedup --keeper-only` measures the rules on planted noisy copies (how many
originals each removes instead of their copy): results/dedup.md, section "Keeper".

Everything is numpy (and polars string kernels) over whole arrays: no per-row Python objects,
so it holds for 10M rows; the noise measures are computed only for rows in clusters of two or
more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from corpus.errors import KalmixError
from corpus.operator import DATASET_COLUMN


def clusters_from_pairs(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cluster id of each of `n` rows given duplicate pairs (left[i], right[i]).

    The id of a cluster is its smallest row index, so a row alone in its cluster has its own
    index as id, and ids are stable whatever the pair order.
    """
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    if left.shape != right.shape:
        raise ValueError("left and right must have the same length")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if left.size == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(left.size, dtype=np.int8), (left, right)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=True, connection="weak")
    _, first = np.unique(labels, return_index=True)  # smallest row of each component
    return first[labels].astype(np.int64)


@dataclass(frozen=True)
class KeeperRule:
    """Which row of a duplicate cluster survives (see the module docstring).

    The default here stays "longest" (semantic dedup's default); `kalmix dedup`
    (`filters.dedup.DedupConfig`) defaults to "cleanest"."""

    PREFER = ("cleanest", "longest", "first")

    prefer: Literal["cleanest", "longest", "first"] = "longest"
    fields: tuple[str, ...] = ("query", "positive")
    priority: tuple[str, ...] = ()
    priority_column: str = "source"

    def __post_init__(self) -> None:
        if self.prefer not in self.PREFER:
            choices = ", ".join(self.PREFER)
            raise KalmixError(f"--prefer must be one of {choices}, got {self.prefer!r}")


@dataclass
class Keepers:
    """`keep[i]`: row i survives; `keeper[i]`: row index of the survivor of i's cluster."""

    keep: np.ndarray
    keeper: np.ndarray

    @property
    def dropped(self) -> np.ndarray:
        """Row indices removed, ascending."""
        return np.flatnonzero(~self.keep)


def text_length(table: pa.Table, fields: tuple[str, ...]) -> np.ndarray:
    """Characters per row summed over the string fields present (null counts as 0)."""
    total = np.zeros(table.num_rows, dtype=np.int64)
    for name in fields:
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            lengths = pc.fill_null(pc.utf8_length(table.column(name)), 0)
            total += lengths.to_numpy().astype(np.int64)
    return total


def _string_fields(table: pa.Table, fields: tuple[str, ...]) -> list[str]:
    names = [n for n in dict.fromkeys(fields) if n in table.column_names]
    return [n for n in names if pa.types.is_string(table.schema.field(n).type)]


# Horizontal whitespace (spaces, tabs, no-break spaces; not line breaks) in runs of two or more.
_SPACE_RUN = r"[^\S\r\n]{2,}"


def upper_case_tenths(table: pa.Table, fields: tuple[str, ...]) -> np.ndarray:
    """Per row, upper-case letters among the cased letters of the string `fields`, in tenths
    (0 = under 10%, 10 = all upper case); rows without cased letters (Chinese, digits) are 0."""
    names = _string_fields(table, fields)
    if not names:
        return np.zeros(table.num_rows, dtype=np.int64)
    frame = pl.from_arrow(table.select(names), rechunk=False)
    upper = pl.sum_horizontal(pl.col(n).fill_null("").str.count_matches(r"\p{Lu}") for n in names)
    lower = pl.sum_horizontal(pl.col(n).fill_null("").str.count_matches(r"\p{Ll}") for n in names)
    counts = frame.select(upper.alias("upper"), lower.alias("lower"))
    upper_n = counts["upper"].to_numpy().astype(np.int64)
    cased = upper_n + counts["lower"].to_numpy().astype(np.int64)
    return (10 * upper_n) // np.maximum(cased, 1)


def whitespace_noise(table: pa.Table, fields: tuple[str, ...]) -> np.ndarray:
    """Per row, whitespace characters a clean copy would not have, summed over the string
    `fields`: leading and trailing whitespace, the characters beyond the first of every run of
    two or more spaces/tabs, and every tab. Line breaks inside a text are not noise."""
    total = np.zeros(table.num_rows, dtype=np.int64)
    names = _string_fields(table, fields)
    if not names:
        return total
    frame = pl.from_arrow(table.select(names), rechunk=False)
    parts = []
    for n in names:
        text = pl.col(n).fill_null("")
        inner = text.str.strip_chars()
        ends = text.str.len_chars() - inner.str.len_chars()
        runs = inner.str.len_chars() - inner.str.replace_all(_SPACE_RUN, " ").str.len_chars()
        parts.append((ends + runs + inner.str.count_matches("\t")).cast(pl.Int64))
    return frame.select(pl.sum_horizontal(parts)).to_series().to_numpy().astype(np.int64)


def _noise_keys(
    table: pa.Table, cluster_ids: np.ndarray, fields: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(upper-case tenths, whitespace noise) per row; 0 for rows alone in their cluster, which
    are their own keeper whatever the keys (so a 10M-row exact pass measures only its copies)."""
    n = table.num_rows
    upper, spaces = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    _, inverse, counts = np.unique(cluster_ids, return_inverse=True, return_counts=True)
    rows = np.flatnonzero(counts[inverse] > 1)
    if rows.size:
        subset = table.select(_string_fields(table, fields)).take(pa.array(rows))
        upper[rows] = upper_case_tenths(subset, fields)
        spaces[rows] = whitespace_noise(subset, fields)
    return upper, spaces


def choose_keepers(
    table: pa.Table, cluster_ids: np.ndarray, rule: KeeperRule = KeeperRule()
) -> Keepers:
    """One keeper per cluster by `rule`; rows of `table` are matched to `cluster_ids` by position."""
    n = table.num_rows
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    if cluster_ids.shape != (n,):
        raise ValueError(f"cluster_ids has {cluster_ids.size} entries for {n} rows")
    order_keys = [np.arange(n, dtype=np.int64)]  # last resort: input order
    if rule.prefer == "longest":
        order_keys.append(-text_length(table, rule.fields))
    if rule.prefer == "cleanest":
        upper, spaces = _noise_keys(table, cluster_ids, rule.fields)
        order_keys += [spaces, upper]  # upper-case share first, then whitespace noise
    if rule.priority and rule.priority_column in table.column_names:
        rank = pc.index_in(table.column(rule.priority_column), pa.array(list(rule.priority)))
        order_keys.append(pc.fill_null(rank, len(rule.priority)).to_numpy().astype(np.int64))
    order_keys.append(cluster_ids)  # np.lexsort: the last key is the primary one
    order = np.lexsort(order_keys)
    sorted_ids = cluster_ids[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    best_of_run = order[starts]  # the keeper of each cluster, in cluster-id order
    run_index = np.cumsum(starts) - 1
    keeper = np.empty(n, dtype=np.int64)
    keeper[order] = best_of_run[run_index]
    return Keepers(keep=keeper == np.arange(n), keeper=keeper)


def duplicate_details(
    table: pa.Table,
    keepers: Keepers,
    similarity: np.ndarray | None = None,
    key: str = "jaccard",
) -> list[dict]:
    """`{"dup_of": keeper id[, "dup_of_dataset": ...], key: similarity}` per dropped row.

    `similarity[i]` is row i's similarity to its keeper (estimated Jaccard, cosine, ...), one
    value per row of `table`; None leaves it out. With `--across` the keeper's dataset is
    recorded too, since it may differ from the dropped row's.
    """
    dropped = keepers.dropped
    keeper_rows = pa.array(keepers.keeper[dropped])
    details: list[dict] = [
        {"dup_of": k} for k in pc.take(table.column("id"), keeper_rows).to_pylist()
    ]
    if DATASET_COLUMN in table.column_names:
        names = pc.take(table.column(DATASET_COLUMN), keeper_rows).to_pylist()
        for d, name in zip(details, names, strict=True):
            d["dup_of_dataset"] = name
    if similarity is not None:
        values = np.asarray(similarity, dtype=np.float64)[dropped].tolist()
        for d, s in zip(details, values, strict=True):
            d[key] = round(s, 4)
    return details


def resolve_duplicates(
    table: pa.Table,
    left: np.ndarray,
    right: np.ndarray,
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threshold: float,
    rule: KeeperRule,
) -> tuple[Keepers, np.ndarray, int]:
    """Keepers from duplicate pairs, never removing a row by transitivity alone.

    Pairs are clustered (union-find) and the keeper rule picks one survivor per cluster, as in
    MinHash dedup; a member is removed only if its own similarity to the keeper reaches the
    threshold. Members that joined through a chain (A~B, B~C, A far from C) are clustered again
    among themselves, round after round. Returns (keepers, similarity of each row to its
    keeper (1 for kept rows), rounds).
    """
    n = table.num_rows
    keep = np.ones(n, dtype=bool)
    keeper = np.arange(n, dtype=np.int64)
    sim = np.ones(n, dtype=np.float32)
    open_rows = np.ones(n, dtype=bool)
    rounds = 0
    while True:
        active = open_rows[left] & open_rows[right]
        left, right = left[active], right[active]
        if left.size == 0:
            return Keepers(keep, keeper), sim, rounds
        rounds += 1
        chosen = choose_keepers(table, clusters_from_pairs(n, left, right), rule)
        members = np.zeros(n, dtype=bool)
        members[left] = members[right] = True
        others = np.flatnonzero(members & ~chosen.keep)
        s = similarity(others, chosen.keeper[others])
        close = s >= threshold
        removed = others[close]
        keep[removed] = False
        keeper[removed] = chosen.keeper[removed]
        sim[removed] = s[close]
        open_rows[:] = False
        open_rows[others[~close]] = True
