import pyarrow as pa
import pyarrow.compute as pc
import pytest

from catalog import versions
from catalog.versions import Commit, DatasetInfo
from corpus.operator import Operator, OpResult, split_by_mask
from corpus.writer import write_table
from kalmix.pipeline import apply, run_operator
from tests.conftest import record_table


class DropSevens(Operator):
    """A row-local operator: removes rows whose query mentions a 7."""

    def __call__(self, table: pa.Table) -> OpResult:
        keep = pc.invert(pc.match_substring(table.column("query"), "7")).to_pylist()
        reasons = [None if k else "has-seven" for k in keep]
        details = [
            None if k else {"query": q}
            for k, q in zip(keep, table.column("query").to_pylist(), strict=True)
        ]
        kept, removed = split_by_mask(table, keep, reasons, details)
        return OpResult(kept, removed, {})

    def params(self) -> dict:
        return {}


drop_sevens = DropSevens()


@pytest.fixture
def sharded(cat):
    n = 1000
    table = record_table(
        [f"question {i}" for i in range(n)], positive=[f"answer {i}" for i in range(n)]
    )
    with versions.staging(cat, "faq") as staged:
        write_table(staged.path, table, rows_per_shard=300)
        info = DatasetInfo("faq", "faq-retrieval", "retrieval")
        versions.commit(cat, Commit("faq", staged, "ingest", {}, info=info))
    return versions.resolve(cat, "faq")


def test_local_pool_matches_inline(cat, sharded):
    assert len(sharded.files) == 4
    inline = run_operator(sharded, drop_sevens, "inline")
    pooled = run_operator(sharded, drop_sevens, "local", workers=2)
    assert pooled.table.column("id").to_pylist() == inline.table.column("id").to_pylist()
    assert pooled.removed.to_pylist() == inline.removed.to_pylist()
    report = apply(cat, sharded, drop_sevens, operation="filter", executor="local", workers=2)
    assert report.rows_in == 1000 and report.rows_out == inline.table.num_rows
    assert report.removed_by_reason == {"has-seven": 1000 - inline.table.num_rows}


def test_ray_matches_inline(cat, sharded):
    pytest.importorskip("ray")
    inline = run_operator(sharded, drop_sevens, "inline")
    on_ray = run_operator(sharded, drop_sevens, "ray")
    assert on_ray.table.column("id").to_pylist() == inline.table.column("id").to_pylist()
    assert on_ray.removed.to_pylist() == inline.removed.to_pylist()
