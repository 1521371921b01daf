"""Duplicate clusters and the keeper rule, shared by every dedup operator (exact, MinHash, semantic).

A dedup operator finds pairs of rows it believes are duplicates (same normalised hash, an LSH
candidate pair whose estimated Jaccard passes, two embeddings above a cosine threshold). This
module turns those pairs into clusters (connected components: union-find, done in one sparse
graph pass by scipy instead of a Python loop) and picks one keeper per cluster, so every dedup
flavour removes rows by the same documented rule:

1. a row whose `priority_column` value comes earlier in `priority` wins (rows whose value is
   not listed rank after every listed one) — e.g. prefer a curated source over a scraped one;
2. then, with `prefer="longest"`, the row with the most characters in `fields` (the most
   informative copy; a truncated near-duplicate loses); with `prefer="first"`, no length test;
3. then the earliest row (input order), so the result is deterministic.

Everything is numpy over whole arrays: no per-row Python objects, so it holds for 10M rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
    """Which row of a duplicate cluster survives (see the module docstring)."""

    prefer: Literal["longest", "first"] = "longest"
    fields: tuple[str, ...] = ("query", "positive")
    priority: tuple[str, ...] = ()
    priority_column: str = "source"


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
