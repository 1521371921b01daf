import os
import signal
import subprocess
import sys

import pyarrow as pa
import pytest

from catalog import queries, versions
from catalog.db import Catalog
from catalog.versions import Commit, DatasetInfo, VersionRef
from corpus.errors import KalmixError
from corpus.schema import TASK_TYPES
from corpus.writer import write_table
from kalmix.ingest import ingest
from tests.conftest import record_table, write_jsonl


def records(n: int, prefix: str = "q") -> pa.Table:
    return record_table(
        [f"{prefix} {i}" for i in range(n)], positive=[f"answer {i}" for i in range(n)]
    )


def test_taxonomy_has_100_categories_of_every_task_type(cat):
    table = queries.categories(cat)
    assert table.num_rows >= 100
    assert set(table.column("task_type").to_pylist()) == set(TASK_TYPES)
    assert all(table.column("instruction").to_pylist())


def test_schema_version_recorded_and_reopen_is_idempotent(ws, cat):
    assert cat.query("SELECT max(version) AS v FROM schema_version").to_pylist()[0]["v"] >= 1
    again = Catalog.open(ws)
    assert again.query("SELECT count(*) AS n FROM categories").to_pylist()[0]["n"] >= 100


def test_commit_assigns_versions_and_lineage(cat):
    info = DatasetInfo("faq", "faq-retrieval", "retrieval")
    [v1] = versions.commit(cat, Commit("faq", records(10), "ingest", {}, info=info))
    [v2] = versions.commit(
        cat, Commit("faq", records(10).slice(0, 7), "dedup", {"threshold": 0.8}, parent=v1)
    )
    assert (v1, v2) == (VersionRef("faq", 1), VersionRef("faq", 2))
    chain = versions.lineage(cat, "faq")
    assert [str(v.ref) for v in chain] == ["faq@v2", "faq@v1"]
    assert chain[0].rows == 7 and chain[0].stats["languages"] == {"en": 7}
    assert chain[1].read().num_rows == 10  # the old version is untouched
    assert versions.resolve(cat, "faq@v1").content_hash != chain[0].content_hash


def test_failed_commit_leaves_nothing(cat):
    with versions.staging(cat, "bad") as staged:
        write_table(staged.path, records(3))
        with pytest.raises(KalmixError, match="unknown category"):
            versions.commit(
                cat,
                Commit(
                    "bad", staged, "ingest", {}, info=DatasetInfo("bad", "no-such-cat", "retrieval")
                ),
            )
    assert not staged.path.exists()
    with pytest.raises(KalmixError, match="unknown category"):
        versions.commit(
            cat,
            Commit("bad", records(3), "ingest", {}, info=DatasetInfo("bad", "no-such-cat", "x")),
        )
    assert list((cat.workspace.data_dir / "bad").iterdir()) == []
    assert cat.query("SELECT count(*) AS n FROM dataset_versions").to_pylist()[0]["n"] == 0


def test_unknown_dataset_and_version_messages(cat):
    info = DatasetInfo("faq", "faq-retrieval", "retrieval")
    versions.commit(cat, Commit("faq", records(2), "ingest", {}, info=info))
    with pytest.raises(KalmixError, match="did you mean faq"):
        versions.resolve(cat, "fqa")
    with pytest.raises(KalmixError, match="has versions: v1"):
        versions.resolve(cat, "faq@v9")


def test_check_reports_and_fixes_orphans(cat):
    orphan = cat.workspace.data_dir / "ghost" / "v1"
    orphan.mkdir(parents=True)
    stale = cat.workspace.data_dir / "ghost" / ".staging-999999999-abcd"
    stale.mkdir()
    report = versions.check(cat)
    assert report.orphans == [orphan] and report.stale_staging == [stale]
    versions.check(cat, fix=True)
    assert not orphan.exists() and not stale.exists()


def test_where_cannot_write_or_read_files(cat, tmp_path):
    info = DatasetInfo("faq", "faq-retrieval", "retrieval")
    versions.commit(cat, Commit("faq", records(2), "ingest", {}, info=info))
    with pytest.raises(KalmixError):
        queries.datasets(cat, "1=1; DROP TABLE datasets")
    with pytest.raises(KalmixError):
        queries.datasets(cat, f"name IN (SELECT * FROM read_csv('{tmp_path}/x.csv'))")
    with pytest.raises(KalmixError, match="Columns you can use"):
        queries.datasets(cat, "nosuchcolumn = 1")
    assert queries.datasets(cat, "language = 'en'").num_rows == 1


WRITER = r"""
import sys
from catalog.db import Catalog
from catalog.workspace import Workspace
from kalmix.ingest import ingest
cat = Catalog.open(Workspace.load(sys.argv[1]))
for i in range(int(sys.argv[4])):
    ingest(cat, sys.argv[2], name=sys.argv[3], category="faq-retrieval")
"""

READER = r"""
import sys, time
from catalog.db import Catalog
from catalog.workspace import Workspace
from catalog import queries
cat = Catalog.open(Workspace.load(sys.argv[1]))
deadline = time.time() + float(sys.argv[2])
n = 0
while time.time() < deadline:
    queries.datasets(cat); n += 1
print(n)
"""


def test_two_writers_and_a_reader_all_succeed(ws, tmp_path):
    src = write_jsonl(
        tmp_path / "faq.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(200)]
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(ws.root), str(src), f"faq{k}", "4"], env=env
        )
        for k in range(2)
    ]
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(ws.root), "8"], env=env, stdout=subprocess.PIPE
    )
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and int(out) > 0
    cat = Catalog.open(ws)
    rows = cat.query(
        "SELECT dataset, count(*) AS n, sum(rows) AS r FROM dataset_versions GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    assert rows == [{"dataset": "faq0", "n": 4, "r": 800}, {"dataset": "faq1", "n": 4, "r": 800}]


KILLED = r"""
import sys, time
import pyarrow as pa
from catalog.db import Catalog
from catalog.workspace import Workspace
from kalmix.ingest import ingest
import corpus.writer as w
orig = w.ShardWriter.write
def slow(self, table):
    orig(self, table)
    print("writing", flush=True)
    time.sleep(30)
w.ShardWriter.write = slow
cat = Catalog.open(Workspace.load(sys.argv[1]))
ingest(cat, sys.argv[2], name="faq", category="faq-retrieval")
"""


def test_killed_ingest_leaves_previous_version_intact(ws, tmp_path):
    src = write_jsonl(
        tmp_path / "faq.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(50)]
    )
    cat = Catalog.open(ws)
    ingest(cat, src, name="faq", category="faq-retrieval")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(ws.root), str(src)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [v.version for v in versions.lineage(cat, "faq")] == [1]
    assert versions.resolve(cat, "faq").read().num_rows == 50
    report = versions.check(cat, fix=True)
    assert len(report.stale_staging) == 1 and not report.orphans
    ingest(cat, src, name="faq", category="faq-retrieval")
    assert versions.resolve(cat, "faq").version == 2
