import gzip
import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
import zstandard

from catalog import versions
from catalog.db import Catalog
from catalog.workspace import Workspace
from corpus.errors import KalmixError
from kalmix.ingest import ingest
from tests.conftest import write_jsonl

ROWS = [
    {"question": f"How do I do thing {i}?", "answer": f"Do it like {i}.", "topic": "t"}
    for i in range(20)
]


def assert_nothing_registered(cat, name="faq"):
    assert (
        cat.query(
            "SELECT count(*) AS n FROM dataset_versions WHERE dataset = ?", [name]
        ).to_pylist()[0]["n"]
        == 0
    )
    folder = cat.workspace.data_dir / name
    assert not folder.exists() or list(folder.iterdir()) == []


def refused(cat, path, match: str, **options) -> None:
    """Ingesting `path` into `faq` is a KalmixError matching `match` that registers nothing."""
    with pytest.raises(KalmixError, match=match):
        ingest(cat, path, **{"name": "faq", "category": "faq-retrieval", **options})
    assert_nothing_registered(cat)


@pytest.mark.parametrize(
    "suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".csv", ".tsv"]
)
def test_formats_give_the_same_records(cat, tmp_path, suffix):
    path = tmp_path / f"faq{suffix}"
    lines = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    if suffix == ".jsonl":
        path.write_bytes(lines)
    elif suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(lines))
    elif suffix == ".jsonl.zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(lines))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(
            f"question{sep}answer{sep}topic\n"
            + "".join(f'"{r["question"]}"{sep}"{r["answer"]}"{sep}t\n' for r in ROWS)
        )
    result = ingest(cat, path, name="faq", category="faq-retrieval", language="en")
    table = versions.resolve(cat, result.ref).read()
    assert table.num_rows == 20
    assert table.column("query").to_pylist()[3] == "How do I do thing 3?"
    assert json.loads(table.column("meta").to_pylist()[0]) == {"topic": "t"}
    expected_ids = ingest(
        cat,
        write_jsonl(tmp_path / "ref.jsonl", ROWS),
        name="ref",
        category="faq-retrieval",
        language="en",
    )
    assert (
        table.column("id").to_pylist()
        == versions.resolve(cat, expected_ids.ref).read().column("id").to_pylist()
    )


def test_hf_save_to_disk_folder_with_class_labels(cat, tmp_path):
    import datasets

    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["card_lost", "refund"]),
        }
    )
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": ["lost my card", "want money back"], "label": [0, 1]}, features=features
            ),
            "test": datasets.Dataset.from_dict({"text": ["x"], "label": [0]}, features=features),
        }
    )
    dd.save_to_disk(str(tmp_path / "hf"))
    result = ingest(cat, tmp_path / "hf", name="intents", category="banking-intent")
    table = versions.resolve(cat, result.ref).read()
    assert table.column("label").to_pylist() == ["card_lost", "refund"]
    assert table.column("task_type").to_pylist() == ["classification"] * 2


def test_sts_csv_maps_sentence_pairs_and_score(cat, shared_data):
    path = shared_data / "stsb" / "en-dev.csv"
    result = ingest(cat, path, name="stsb-dev", category="general-sts", language="en")
    table = versions.resolve(cat, result.ref).read()
    assert table.num_rows == 1500
    assert table.column("score").null_count == 0
    assert table.column("positive").null_count == 0


def test_banking77_csv_with_crlf_and_quoted_newlines(cat, shared_data):
    path = shared_data / "banking77" / "train.csv"
    result = ingest(cat, path, name="b77", category="banking-intent", language="en")
    assert result.rows == 10003
    table = versions.resolve(cat, result.ref).read()
    assert len(set(table.column("label").to_pylist())) == 77


def test_streams_in_batches(cat, tmp_path):
    path = write_jsonl(
        tmp_path / "big.jsonl", [{"query": f"q{i}", "positive": f"p{i}"} for i in range(5000)]
    )
    result = ingest(cat, path, name="big", category="faq-retrieval", batch_rows=700)
    info = versions.resolve(cat, result.ref)
    assert info.rows == 5000 and info.read().column("query").to_pylist()[4999] == "q4999"


def test_key_first_seen_late_is_kept(cat, tmp_path):
    """polars infers from 100 lines by default and would drop `hard`; a later block parsed
    with the schema of the first must not drop a new key either, nested ones included."""
    rows = [{"query": f"q{i}", "positive": f"p{i}", "extra": {"a": i}} for i in range(40_000)]
    rows[400]["hard"] = "late in the first block"
    rows[39_000]["late"] = "in a later block"
    rows[39_500]["extra"]["b"] = "nested, in a later block"
    path = write_jsonl(tmp_path / "late.jsonl", rows)
    assert path.stat().st_size > 2 * (1 << 20)  # with batch_rows=4096: 1 MiB blocks, three
    result = ingest(cat, path, name="late", category="faq-retrieval", batch_rows=4096)
    meta = versions.resolve(cat, result.ref).read().column("meta").to_pylist()
    assert json.loads(meta[400])["hard"] == "late in the first block"
    assert json.loads(meta[39_000])["late"] == "in a later block"
    assert json.loads(meta[39_500])["extra"] == {"a": 39_500, "b": "nested, in a later block"}
    assert json.loads(meta[20_000])["extra"]["a"] == 20_000


# --- bad input: a clear KalmixError and no partial version -------------------------------------


def test_missing_file(cat, tmp_path):
    refused(cat, tmp_path / "nope.jsonl", "input not found")


def test_unknown_format(cat, tmp_path):
    (tmp_path / "x.xml").write_text("<a/>")
    refused(cat, tmp_path / "x.xml", "cannot tell the format")


def test_missing_column_lists_columns_and_map(cat, tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"q": "a", "a": "b"}])
    with pytest.raises(KalmixError) as err:
        ingest(cat, path, name="faq", category="faq-retrieval")
    assert "its columns are: q, a" in str(err.value) and "--map query=q,positive=a" in str(
        err.value
    )
    assert_nothing_registered(cat)
    ingest(cat, path, name="faq", category="faq-retrieval", mapping="query=q,positive=a")


def test_malformed_json_line_is_named_or_skipped(cat, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(
        '{"query": "a", "positive": "b"}\n{"query": "c", "positive": \n{"query": "e", "positive": "f"}\n'
    )
    refused(cat, path, "line 2")
    result = ingest(cat, path, name="faq", category="faq-retrieval", skip_invalid=True)
    info = versions.resolve(cat, result.ref)
    assert (
        info.rows == 2 and info.stats["invalid_skipped"] == 1 and info.stats["invalid_lines"] == [2]
    )


def test_empty_input(cat, tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    refused(cat, tmp_path / "e.jsonl", "holds no records")


def test_unknown_category_suggests(cat, tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", ROWS)
    refused(cat, path, "did you mean.*faq-retrieval", category="faq-retreival")


def test_name_taken_with_different_schema(cat, tmp_path):
    ingest(cat, write_jsonl(tmp_path / "f.jsonl", ROWS), name="faq", category="faq-retrieval")
    with pytest.raises(KalmixError, match="already exists as retrieval"):
        ingest(
            cat,
            write_jsonl(tmp_path / "c.jsonl", [{"text": "x", "label": "y"}]),
            name="faq",
            category="banking-intent",
        )
    with pytest.raises(KalmixError, match="already exists with fields"):
        ingest(
            cat,
            write_jsonl(
                tmp_path / "n.jsonl", [{"query": "x", "positive": "y", "negatives": ["z"]}]
            ),
            name="faq",
            category="faq-retrieval",
        )
    assert [v.version for v in versions.lineage(cat, "faq")] == [1]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_non_writable_workspace(cat, tmp_path):
    cat.workspace.data_dir.chmod(0o500)
    try:
        with pytest.raises(KalmixError, match="not writable"):
            ingest(
                cat, write_jsonl(tmp_path / "f.jsonl", ROWS), name="faq", category="faq-retrieval"
            )
    finally:
        cat.workspace.data_dir.chmod(0o700)


def test_non_writable_workspace_as_any_user(cat, tmp_path):
    """Root ignores permission bits, so make the data folder a file: writing under it fails."""
    (cat.workspace.data_dir / "faq").write_text("not a folder")
    with pytest.raises(KalmixError, match="cannot write under"):
        ingest(cat, write_jsonl(tmp_path / "f.jsonl", ROWS), name="faq", category="faq-retrieval")


def test_ids_follow_the_workspace_algorithm_and_a_workspace_keeps_its_own(ws, tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", ROWS[:3])
    assert ws.id_algorithm == "xxh3-128" and "[records]" in (ws.root / "kalmix.toml").read_text()
    cat = Catalog.open(ws)
    new = versions.resolve(cat, ingest(cat, path, name="faq", category="faq-retrieval").ref)
    assert new.stats["id_algorithm"] == "xxh3-128"
    key = "\x1f".join(["retrieval", ROWS[0]["question"], ROWS[0]["answer"], "", "", ""])
    assert new.read().column("id")[0].as_py() == xxhash.xxh128_hexdigest(key.encode())[:16]

    # a workspace from before the setting (no [records] in kalmix.toml) keeps md5 ids
    old = Workspace.init(tmp_path / "old")
    config = old.root / "kalmix.toml"
    config.write_text(config.read_text().replace('[records]\nid = "xxh3-128"\n', ""))
    old_cat = Catalog.open(Workspace.load(old.root))
    ref = ingest(old_cat, path, name="faq", category="faq-retrieval").ref
    got = versions.resolve(old_cat, ref)
    assert got.stats["id_algorithm"] == "md5"
    assert got.read().column("id")[0].as_py() == hashlib.md5(key.encode()).hexdigest()[:16]

    config.write_text(config.read_text() + '[records]\nid = "sha1"\n')
    with pytest.raises(KalmixError, match=r"\[records\] id = 'sha1' is not an id algorithm"):
        Workspace.load(old.root)
