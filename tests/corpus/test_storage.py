"""corpus.storage on a local folder and on S3 (a local moto server): the same operations."""

from __future__ import annotations

import pyarrow as pa
import pytest

from corpus import storage
from corpus.writer import ShardWriter, write_table


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return tmp_path / "data"
    return request.getfixturevalue("s3_uri")


def test_write_list_read_move_remove(root):
    folder = storage.join(root, "faq", ".staging-1-abcd")
    storage.makedirs(folder)
    table = pa.table({"id": [f"r{i}" for i in range(10)], "n": list(range(10))})
    with ShardWriter(folder, rows_per_shard=4) as writer:
        writer.write(table)
        files = writer.close()
    assert [storage.name(f) for f in files] == [f"part-0000{i}.parquet" for i in range(3)]
    assert storage.parquet_files(folder) == files
    assert [storage.num_rows(f) for f in files] == [4, 4, 2]

    final = storage.join(root, "faq", "v1")
    storage.move(folder, final)
    assert not storage.exists(folder) and storage.exists(storage.join(final, "part-00002.parquet"))
    assert ("v1", True) in storage.listdir(storage.join(root, "faq"))
    moved = storage.parquet_files(final)
    assert pa.concat_tables(storage.read_table(f) for f in moved).equals(table)
    assert storage.read_schema(moved[0]).names == ["id", "n"]
    with storage.open_input(moved[0]) as fh:
        assert fh.read(4) == b"PAR1"

    taken = storage.join(root, "faq", "v2")
    storage.makedirs(taken)
    write_table(taken, table)
    with pytest.raises(OSError):  # never onto a folder that holds data
        storage.move(final, taken)
    storage.rmtree(final)
    storage.rmtree(final)  # missing is fine
    assert storage.listdir(final) == [] and not storage.exists(moved[0])


def test_duckdb_scan_unites_columns_by_name(root):
    import duckdb

    storage.makedirs(storage.join(root, "x"))
    a = storage.join(root, "x", "a.parquet")
    b = storage.join(root, "x", "b.parquet")
    for path, table in (
        (a, pa.table({"id": ["1", "2"], "query": ["q1", "q2"]})),
        (b, pa.table({"id": ["3"], "query": ["q3"], "label": ["L"]})),
    ):
        with storage.parquet_writer(path, table.schema) as writer:
            writer.write_table(table)
    con = duckdb.connect()
    got = con.sql(f"SELECT id, label FROM {storage.duckdb_scan(con, [a, b])} ORDER BY id")
    assert got.fetchall() == [("1", None), ("2", None), ("3", "L")]


def test_uris_and_local_paths():
    assert storage.is_uri("s3://b/k") and storage.is_uri("memory://x")
    assert not storage.is_uri("/tmp/x") and not storage.is_uri("file:///tmp/x")
    assert storage.join("s3://b/k/", "v1", "f.parquet") == "s3://b/k/v1/f.parquet"
    assert storage.name("s3://b/k/v1/") == "v1"


def test_fsspec_only_scheme_is_wrapped():
    """memory:// is fsspec's, not pyarrow's: it is reached through pyarrow's fsspec handler."""
    root = "memory://kalmix-test/data"
    storage.makedirs(root)
    [path] = write_table(root, pa.table({"a": [1, 2]}))
    assert storage.read_table(path).column("a").to_pylist() == [1, 2]
    assert storage.listdir(root) == [("part-00000.parquet", False)]


def test_unknown_scheme_is_a_clear_error():
    from corpus.errors import KalmixError

    with pytest.raises(KalmixError, match="no filesystem for nosuch://"):
        storage.read_table("nosuch://bucket/x.parquet")


def test_replaced_swaps_in_the_new_file_or_keeps_the_old_one(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with storage.replaced(path) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == tmp_path
        tmp.write_text("new")
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError), storage.replaced(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
