import json

import numpy as np
import pyarrow as pa

from corpus.operator import split_rows
from filters.clusters import KeeperRule, choose_keepers, clusters_from_pairs, duplicate_details


def test_clusters_from_pairs_joins_chains_and_names_by_smallest_row():
    ids = clusters_from_pairs(7, np.array([5, 1, 3]), np.array([3, 4, 1]))
    assert ids.tolist() == [0, 1, 2, 1, 1, 1, 6]
    assert clusters_from_pairs(3, np.array([], int), np.array([], int)).tolist() == [0, 1, 2]
    assert clusters_from_pairs(0, np.array([], int), np.array([], int)).tolist() == []


def _table() -> pa.Table:
    return pa.table(
        {
            "id": ["a", "b", "c", "d", "e"],
            "query": ["short", "a much longer text", "x", "same", "same"],
            "positive": [None, "p", "y", "one", "one"],
            "source": ["web", "web", "curated", "web", "web"],
            "_dataset": ["s1", "s2", "s1", "s1", "s2"],
        }
    )


def test_keeper_rule_longest_then_priority_then_first():
    table = _table()
    clusters = clusters_from_pairs(5, np.array([0, 1, 3]), np.array([1, 2, 4]))
    longest = choose_keepers(table, clusters)
    assert longest.keep.tolist() == [False, True, False, True, False]
    assert longest.keeper.tolist() == [1, 1, 1, 3, 3]  # ties keep the earliest row
    curated = choose_keepers(table, clusters, KeeperRule(priority=("curated",)))
    assert curated.keeper.tolist() == [2, 2, 2, 3, 3]
    first = choose_keepers(table, clusters, KeeperRule(prefer="first"))
    assert first.keeper.tolist() == [0, 0, 0, 3, 3]


def test_split_rows_records_dup_of_and_keeps_dataset_column():
    table = _table()
    clusters = clusters_from_pairs(5, np.array([3]), np.array([4]))
    keepers = choose_keepers(table, clusters)
    details = duplicate_details(table, keepers, np.full(5, 0.9))
    kept, removed = split_rows(table, keepers.keep, "near_duplicate", details)
    assert kept.column("id").to_pylist() == ["a", "b", "c", "d"]
    assert "_dataset" in kept.column_names
    assert removed.column("_dataset").to_pylist() == ["s2"]
    detail = json.loads(removed.column("detail")[0].as_py())
    assert detail == {"dup_of": "d", "dup_of_dataset": "s1", "jaccard": 0.9}
