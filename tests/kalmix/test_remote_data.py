"""A workspace whose dataset versions live on S3 (a local moto server): the whole data path,
and Ray workers reading the shards from the store, give what a local workspace gives."""

from __future__ import annotations

import pyarrow as pa
import pytest

from catalog import versions
from catalog.db import Catalog
from catalog.mixtures import MixtureSpec, create_mixture, iter_dataset_tables
from catalog.workspace import Workspace
from corpus import storage
from corpus.errors import KalmixError
from corpus.sample import python_docs_records
from corpus.writer import write_table
from tests.conftest import write_jsonl


def _rows() -> list[dict]:
    """Real docstrings with planted exact and near copies, and a German row for langid."""
    docs = [r for r in python_docs_records() if len(r["answer"].split()) > 30][:40]
    rows = [{"question": d["question"], "answer": d["answer"]} for d in docs]
    rows += [dict(rows[i]) for i in range(5)]  # exact copies
    rows += [{**rows[i], "answer": rows[i]["answer"] + " Also."} for i in range(5, 9)]  # near
    rows.append({"question": "Wie spät ist es?", "answer": "Es ist drei Uhr am Nachmittag."})
    return rows


def _workspace(root, data: str | None = None):
    return Catalog.open(Workspace.init(root, data))


def _ids(cat, ref: str) -> list[str]:
    return versions.resolve(cat, ref).read(["id"]).column("id").to_pylist()


def test_pipeline_on_s3_matches_local_workspace(cli, tmp_path, monkeypatch, s3_uri, local_ray):
    remote = _workspace(tmp_path / "remote", s3_uri)
    local = _workspace(tmp_path / "local")
    source = write_jsonl(tmp_path / "faq.jsonl", _rows())
    assert remote.workspace.data_root == s3_uri

    for cat in (local, remote):
        monkeypatch.setenv("KALMIX_HOME", str(cat.workspace.root))
        steps = [
            ["ingest", str(source), "--name", "faq", "--category", "faq-retrieval"],
            ["dedup", "faq", "--executor", "ray" if cat is remote else "local"],
            ["langid", "faq", "--keep", "en", "--executor", "ray" if cat is remote else "inline"],
            ["catalog", "show", "faq"],
        ]
        for args in steps:
            result = cli(*args)
            assert result.exit_code == 0, (args, result.output, result.exception)

    info = versions.resolve(remote, "faq")
    assert info.version == 3 and str(info.path) == f"{s3_uri}/faq/v3"
    assert all(str(f).startswith(f"{s3_uri}/faq/v3/part-") for f in info.files)
    assert not any(remote.workspace.data_dir.iterdir())  # nothing written locally
    for ref in ("faq@v1", "faq@v2", "faq@v3"):
        assert _ids(remote, ref) == _ids(local, ref)
        r, lo = versions.resolve(remote, ref), versions.resolve(local, ref)
        assert r.content_hash == lo.content_hash and r.stats["rows"] == lo.stats["rows"]
    assert versions.resolve(remote, "faq@v2").stats["removed_by_reason"] == {
        "exact_duplicate": 5,
        "near_duplicate": 4,
    }

    spec = MixtureSpec(where="true", budget=20, seed=3)
    mixed = [
        pa.concat_tables(t for _, t in iter_dataset_tables(cat, create_mixture(cat, "m", spec)))
        for cat in (remote, local)
    ]
    assert mixed[0].equals(mixed[1]) and mixed[0].num_rows == 20


def test_commit_and_check_on_s3(tmp_path, s3_uri, monkeypatch):
    from kalmix.ingest import ingest

    cat = _workspace(tmp_path / "ws", s3_uri)
    source = write_jsonl(tmp_path / "faq.jsonl", _rows())
    ingest(cat, source, name="faq", category="faq-retrieval")

    def fail(files):
        raise RuntimeError("killed after the move, before the catalog row")

    with monkeypatch.context() as patch:  # the commit fails after the copy to v2
        patch.setattr(versions, "_content_hash", fail)
        with pytest.raises(RuntimeError, match="killed"):
            ingest(cat, source, name="faq", category="faq-retrieval")
    assert [n for n, _ in storage.listdir(f"{s3_uri}/faq")] == ["v1"]  # moved back, discarded
    assert versions.resolve(cat, "faq").version == 1 and not versions.check(cat).missing

    orphan, stale = f"{s3_uri}/faq/v7", f"{s3_uri}/faq/.staging-999999999-abcd"
    for folder in (orphan, stale):
        write_table(folder, pa.table({"a": [1]}))
    assert ingest(cat, source, name="faq", category="faq-retrieval").ref.version == 8  # not v7
    report = versions.check(cat)
    assert report.orphans == [orphan] and report.stale_staging == [stale] and not report.missing
    versions.check(cat, fix=True)
    assert not storage.exists(orphan) and not storage.exists(stale)

    from dashboard import data  # the dataset page reads a version's files directly

    files = tuple(str(f) for f in versions.resolve(cat, "faq@v1").files)
    assert data.sample_rows(files, 5).num_rows == 5
    assert set(data.length_histogram(files).column("field").to_pylist()) == {"query", "positive"}
    some = tuple(_ids(cat, "faq@v1")[:3])
    assert sorted(data.removed_texts(files, some).column("id").to_pylist()) == sorted(some)

    storage.rmtree(f"{s3_uri}/faq/v1")
    assert versions.check(cat).missing == ["faq@v1"]


def test_unreachable_data_root_is_a_clear_error(tmp_path, s3_uri):
    bucket = s3_uri.split("/")[2]
    with pytest.raises(KalmixError, match="cannot write to the data root s3://"):
        Workspace.init(tmp_path / "ws", s3_uri.replace(bucket, bucket + "-missing"))
    assert Workspace.init(tmp_path / "ws").data_root == tmp_path / "ws" / "data"  # not kept
    with pytest.raises(KalmixError, match="no filesystem for nosuch://"):
        Workspace.init(tmp_path / "ws2", "nosuch://bucket/data")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".csv", ".parquet"])
def test_ingest_input_from_s3(tmp_path, s3_uri, suffix):
    """The input file itself on the store: streamed from there, decompressed by its name."""
    import gzip

    rows = _rows()[:20]
    local_file = write_jsonl(tmp_path / "faq.jsonl", rows)
    remote_file = f"{s3_uri}/inputs/faq{suffix}"
    table = pa.Table.from_pylist(rows)
    if suffix == ".parquet":
        with storage.parquet_writer(remote_file, table.schema) as writer:
            writer.write_table(table)
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, tmp_path / "faq.csv")
        storage.write_bytes(remote_file, (tmp_path / "faq.csv").read_bytes())
    else:
        storage.write_bytes(remote_file, gzip.compress(local_file.read_bytes()))
    cat = _workspace(tmp_path / "ws")
    from kalmix.ingest import ingest

    local = ingest(cat, local_file, name="local", category="faq-retrieval")
    remote = ingest(cat, remote_file, name="remote", category="faq-retrieval")
    assert remote.rows == 20
    assert _ids(cat, str(remote.ref)) == _ids(cat, str(local.ref))
    assert versions.resolve(cat, "remote").params["file"] == remote_file
    with pytest.raises(KalmixError, match="input not found"):
        ingest(cat, f"{s3_uri}/inputs/nope.jsonl", name="x", category="faq-retrieval")
