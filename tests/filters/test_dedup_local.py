"""The out-of-core local plan of `Dedup` (`filters.dedup_local`) against the in-memory operator."""

import random
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from corpus.errors import KalmixError
from corpus.executor import LocalExecutor, read_shards
from corpus.writer import write_table
from filters.dedup import Dedup, DedupConfig
from filters.dedup_local import memory_bytes
from tests.filters import test_dedup
from tests.filters.test_dedup import edit_words, noisy, records

docs = test_dedup.docs  # the module's fixture: ~150-word stdlib documents

COMPARED = (
    "rows",
    "exact_duplicates",
    "near_duplicates",
    "without_text",
    "bands",
    "rows_per_band",
    "candidate_pairs",
    "verified_pairs",
    "cluster_rounds",
)


def _shards(folder, name, table, rows_per_shard, row_group):
    """The table as Parquet shards of `rows_per_shard` rows, each in row groups of `row_group`."""
    (folder / name).mkdir()
    files = write_table(folder / name, table, rows_per_shard=rows_per_shard)
    for f in files:
        pq.write_table(pq.read_table(f), f, row_group_size=row_group)
    return [(name if name != "one" else None, str(f)) for f in files]


def planted(texts, seed):
    rng = random.Random(seed)
    base = texts[:60]
    near = [edit_words(d, rng, 1) for d in base[:15]]
    exact = [noisy(d) for d in base[15:25]]
    chained = [edit_words(d, rng, 2) for d in near[:5]]  # copies of copies
    rows = base + near + exact + chained + ["", "!!!", "!!!", base[0]]  # no shingles, repeats
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("workers", [1, 2])
def test_out_of_core_plan_gives_the_in_memory_result(docs, tmp_path, workers):
    table = records(planted(docs, workers))
    shards = _shards(tmp_path, "one", table, rows_per_shard=17, row_group=5)
    cache = tmp_path / "cache"
    (cache / "dedup-999999999-old").mkdir(parents=True)  # left by a killed run: removed
    config = DedupConfig(workers=workers, batch_docs=3, memory_limit="64MB", work_dir=str(cache))
    expected = Dedup(config)(read_shards(shards))
    result = LocalExecutor().run(Dedup(config), shards)
    assert len(shards) > 4 and result.stats["executor"] == "local"
    assert expected.stats["exact_duplicates"] >= 10 and expected.stats["near_duplicates"] >= 15
    assert {k: result.stats[k] for k in COMPARED} == {k: expected.stats[k] for k in COMPARED}
    assert result.table.read().column("id").to_pylist() == expected.table.column("id").to_pylist()
    assert result.table.num_rows == expected.table.num_rows
    assert result.removed.to_pylist() == expected.removed.to_pylist()
    assert list(cache.iterdir()) == []  # its own folder is gone too


def test_out_of_core_across_datasets_with_priority_and_exact_only(docs, tmp_path):
    a, b = planted(docs, 3), planted(docs[10:], 4)
    shards = _shards(tmp_path, "a", records(a), 13, 4) + _shards(
        tmp_path, "b", records(b, source="curated"), 11, 6
    )
    for config in (
        DedupConfig(workers=1, batch_docs=4, priority=("curated",), prefer="longest"),
        DedupConfig(workers=1, near=False),
    ):
        config = replace(config, work_dir=str(tmp_path / "cache"))
        expected = Dedup(config)(read_shards(shards))
        result = LocalExecutor().run(Dedup(config), shards)
        got = result.table.read()
        assert got.to_pylist() == expected.table.to_pylist()
        assert result.removed.to_pylist() == expected.removed.to_pylist()
        by_dataset = [t for d in "ab" for t in result.table.batches(d)]
        assert sum(t.num_rows for t in by_dataset) == got.num_rows


def test_memory_limit_words():
    assert memory_bytes("4GB") == 4 * 10**9 and memory_bytes("512 MiB") == 512 * 2**20
    for bad in ("", "4 parsecs", "-1GB", "0"):
        with pytest.raises(KalmixError, match="--memory-limit"):
            DedupConfig(memory_limit=bad)
