"""Mixtures on real small datasets in a real workspace: planning, sampling, pinning, reading."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import versions
from catalog.db import Catalog
from catalog.mixtures import (
    MixtureRef,
    MixtureSpec,
    create_mixture,
    diff_mixtures,
    iter_dataset_tables,
    materialize,
    plan_mixture,
    resolve_mixture,
)
from catalog.mixtures.plan import _split_and
from catalog.versions import Commit, DatasetInfo
from catalog.workspace import Workspace
from corpus.errors import KalmixError
from corpus.writer import ShardWriter
from tests.conftest import record_table

TASK = {"faq-retrieval": "retrieval", "general-sts": "sts", "banking-intent": "classification"}


def add_version(cat, name, n, category="faq-retrieval", *, language="en", is_eval=False, tag=""):
    """Register a version of `n` rows over 3 files of 2 row groups; rows 0 and 1 are duplicates."""
    queries = [f"{name}{tag} q{i}" for i in range(n)]
    queries[1] = queries[0]
    table = record_table(
        queries,
        task_type=TASK[category],
        category=category,
        positive=[f"p{i}" if i > 1 else "p0" for i in range(n)],
        language=language,
    )
    per_file = -(-n // 3)
    with versions.staging(cat, name) as staged:
        with ShardWriter(staged.path, rows_per_shard=per_file) as writer:
            for batch in table.to_batches(max_chunksize=max(1, per_file // 2)):
                writer.write(batch)
            writer.close()
        info = DatasetInfo(name, category, TASK[category], is_eval=is_eval)
        return versions.commit(cat, Commit(name, staged, "ingest", {}, info=info))[0]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One workspace with datasets; tests here only add mixtures (distinct names) to it."""
    cat = Catalog.open(Workspace.init(tmp_path_factory.mktemp("mix") / "ws"))
    add_version(cat, "big", 1000)
    add_version(cat, "mid", 100, "general-sts", language="zh")
    add_version(cat, "small", 10, "banking-intent")
    add_version(cat, "evalset", 50, is_eval=True)
    return cat


def taken(entries):
    return {e.dataset: e.rows_taken for e in entries}


def test_weightings_caps_and_budget(shared):
    sel = "not is_eval or is_eval"  # the eval set matches but is skipped
    assert taken(plan_mixture(shared, MixtureSpec(where=sel))) == {
        "big": 1000,
        "mid": 100,
        "small": 10,
    }
    uniform = plan_mixture(shared, MixtureSpec(where=sel, weighting="uniform"))
    assert taken(uniform) == {"big": 10, "mid": 10, "small": 10}
    assert [round(e.weight, 3) for e in uniform] == [0.333] * 3
    # temperature: p ~ n^(1/2) = 31.6 : 10 : 3.16 -> 70.6, 22.3, 7.1 -> 71, 22, 7
    temp = plan_mixture(shared, MixtureSpec(where=sel, weighting="temperature", tau=2, budget=100))
    assert taken(temp) == {"big": 71, "mid": 22, "small": 7}
    # at 300, small (10 rows) is full and its excess goes to the others by weight
    temp = plan_mixture(shared, MixtureSpec(where=sel, weighting="temperature", tau=2, budget=300))
    assert taken(temp) == {"big": 220, "mid": 70, "small": 10}
    # a row cap on big sends the excess to the others by weight, within their rows
    capped = plan_mixture(
        shared, MixtureSpec(where=sel, weighting="temperature", tau=2, budget=250, cap=150)
    )
    assert taken(capped) == {"big": 150, "mid": 90, "small": 10}
    share = plan_mixture(shared, MixtureSpec(where=sel, budget=100, cap_share=0.5))
    assert taken(share)["big"] == 50 and sum(taken(share).values()) == 100
    explicit = plan_mixture(
        shared,
        MixtureSpec(datasets=["big", "mid@v1"], weights={"big": 1, "mid": 3}, budget=80),
    )
    assert taken(explicit) == {"big": 20, "mid": 60}
    assert {e.dataset: e.instruction for e in explicit}[
        "mid"
    ] == "Retrieve semantically similar text"
    assert shared.query("SELECT count(*) AS n FROM mixtures").to_pylist()[0]["n"] == 0
    assert not (shared.workspace.root / "mixtures").exists()  # a plan writes nothing


def test_create_is_deterministic_and_stored_as_positions(shared):
    spec = MixtureSpec(where="true", weighting="uniform", budget=30, seed=7)
    a = create_mixture(shared, "det-a", spec)
    b = create_mixture(shared, "det-b", spec)
    assert a.content_hash == b.content_hash and a.entries == b.entries
    assert a.ids_path.read_bytes() == b.ids_path.read_bytes()
    assert a.ids_path == shared.workspace.root / "mixtures" / "det-a" / "v1" / "rows.parquet"
    rows = pq.read_table(a.ids_path)
    assert rows.column_names == ["dataset", "version", "file", "row", "id"]
    assert rows.num_rows == 30 and set(rows.column("file").to_pylist()) <= {0, 1, 2}
    other = create_mixture(shared, "det-a", MixtureSpec(where="true", budget=30, seed=8))
    assert str(other.ref) == "det-a@v2" and other.content_hash != a.content_hash
    assert resolve_mixture(shared, "det-a").version == 2
    assert resolve_mixture(shared, MixtureRef("det-a", 1)).content_hash == a.content_hash

    orphan = shared.workspace.root / "mixtures" / "det-a" / "v9"
    stale = shared.workspace.root / "mixtures" / "det-a" / ".staging-999999999-abcd"
    orphan.mkdir()
    stale.mkdir()
    report = versions.check(shared)
    assert report.orphans == [orphan] and report.stale_staging == [stale] and not report.missing
    versions.check(shared, fix=True)
    assert not orphan.exists() and not stale.exists() and a.ids_path.exists()


def test_version_stays_pinned_after_new_dataset_versions(cat):
    add_version(cat, "faq", 40)
    add_version(cat, "sts", 20, "general-sts")
    spec = MixtureSpec(where="task_type in ('retrieval', 'sts')", budget=30, seed=1)
    v1 = create_mixture(cat, "pin", spec)

    def sampled(ref):
        return {
            name: t.column("query").to_pylist()
            for name, t in iter_dataset_tables(cat, ref, batch_rows=1000)
        }

    before = sampled("pin@v1")
    add_version(cat, "faq", 40, tag="-new")
    assert resolve_mixture(cat, "pin@v1").entries == v1.entries
    assert sampled("pin@v1") == before
    v2 = create_mixture(cat, "pin", spec)
    assert {e.dataset: e.version for e in v2.entries} == {"faq": 2, "sts": 1}
    assert all("-new" in q for q in sampled("pin@v2")["faq"])
    # a create that fails half-way leaves no folder and no catalog row
    next(versions.resolve(cat, "faq@v1").path.glob("*.parquet")).unlink()
    with pytest.raises(KalmixError, match="data file missing"):
        create_mixture(cat, "pin", MixtureSpec(datasets=["faq@v1"]))
    assert sorted(p.name for p in (cat.workspace.root / "mixtures" / "pin").iterdir()) == [
        "v1",
        "v2",
    ]
    assert resolve_mixture(cat, "pin").version == 2
    with pytest.raises(KalmixError, match="missing"):
        list(iter_dataset_tables(cat, "pin@v1"))
    table = diff_mixtures(cat, "pin@v1", "pin@v2").to_pylist()
    assert [(r["dataset"], r["change"], r["from"], r["to"]) for r in table] == [
        ("faq", "changed", "v1", "v2"),
        ("sts", "same", "v1", "v1"),
    ]


def test_iter_dataset_tables_batches_columns_and_instructions(shared):
    spec = MixtureSpec(
        datasets=["mid", "small"],
        weights={"mid": 1, "small": 1},
        budget=500,
        allow_repeat=True,
        instructions={"small": "Classify the banking query"},
        seed=3,
    )
    with pytest.raises(KalmixError, match="above the 110 rows .* pass --allow-repeat"):
        plan_mixture(shared, MixtureSpec(**{**spec.to_dict(), "allow_repeat": False}))
    mv = create_mixture(shared, "reader", spec)
    assert taken(mv.entries) == {"mid": 250, "small": 250}
    got = list(iter_dataset_tables(shared, mv, batch_rows=64, columns=["query", "instruction"]))
    assert [n for n, _ in got] == ["mid"] * 4 + ["small"] * 4
    assert [t.num_rows for _, t in got] == [64, 64, 64, 58] * 2
    assert got[0][1].column_names == ["query", "instruction"]
    mid = pa.concat_tables([t for n, t in got if n == "mid"])
    small = pa.concat_tables([t for n, t in got if n == "small"])
    assert mid.column("instruction").unique().to_pylist() == ["Retrieve semantically similar text"]
    assert small.column("instruction").unique().to_pylist() == ["Classify the banking query"]
    counts = small.group_by("query").aggregate([("query", "count")]).column("query_count")
    assert sorted(set(counts.to_pylist())) == [25, 50]  # each row 25 times; q0 and q1 are equal
    stored = pq.read_table(mv.ids_path, filters=[("dataset", "=", "mid")])
    positions = list(
        zip(stored.column("file").to_pylist(), stored.column("row").to_pylist(), strict=True)
    )
    assert len(set(positions)) == 100  # every row twice, 50 three times
    ids = dict(zip(positions, stored.column("id").to_pylist(), strict=True))
    assert ids[(0, 0)] == ids[(0, 1)]  # duplicates share an id, kept apart by position
    assert list(iter_dataset_tables(shared, mv, datasets=["small"]))[0][0] == "small"


def test_materialize_is_deterministic_and_shuffled(shared, tmp_path):
    mv = create_mixture(shared, "shards", MixtureSpec(where="true", budget=200, seed=5))
    files = materialize(shared, mv, tmp_path / "a", rows_per_shard=64)
    again = materialize(shared, "shards@v1", tmp_path / "b", rows_per_shard=64)
    assert [f.name for f in files] == [f"part-0000{i}.parquet" for i in range(4)]
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in again]
    table = pq.read_table(tmp_path / "a")
    assert table.num_rows == 200 and table.column_names[-1] == "_dataset"
    order = table.column("_dataset").to_pylist()
    assert order != sorted(order)
    assert json.loads((tmp_path / "a" / "_mixture.json").read_text())["mixture"] == "shards@v1"
    with pytest.raises(KalmixError, match="not empty"):
        materialize(shared, mv, tmp_path / "a")
    # more shards than spill buckets: several shards share a bucket, same rows in all
    many = materialize(shared, mv, tmp_path / "c", rows_per_shard=1)
    assert len(many) == 200 and pq.read_table(many[-1]).num_rows == 1
    again = pq.read_table(tmp_path / "c")
    assert sorted(again.column("id").to_pylist()) == sorted(table.column("id").to_pylist())


def test_where_errors_explain_and_never_write(shared, tmp_path):
    with pytest.raises(KalmixError) as err:
        plan_mixture(shared, MixtureSpec(where="task_type = 'sts' AND rows BETWEEN 1 AND 5"))
    assert "(task_type = 'sts') matches 1 datasets" in str(err.value)
    assert "(rows BETWEEN 1 AND 5) matches 0 datasets" in str(err.value)
    with pytest.raises(KalmixError, match="evaluation datasets matched"):
        plan_mixture(shared, MixtureSpec(where="is_eval"))
    with pytest.raises(KalmixError, match=r"(?s)syntax.*Columns you can use: name, category"):
        plan_mixture(shared, MixtureSpec(where="task_type = = 'sts'"))
    before = shared.query("SELECT count(*) AS n FROM datasets").to_pylist()
    target = tmp_path / "leak.csv"
    for where in (
        "1=1; DROP TABLE datasets",
        f"1=1); COPY datasets TO '{target}' --",
        f"1=1 COPY datasets TO '{target}'",
        f"name IN (SELECT name FROM read_csv('{target}'))",
    ):
        with pytest.raises(KalmixError):
            create_mixture(shared, "evil", MixtureSpec(where=where))
    assert shared.query("SELECT count(*) AS n FROM datasets").to_pylist() == before
    assert not target.exists()
    with pytest.raises(KalmixError, match="unknown mixture 'evil'"):
        resolve_mixture(shared, "evil")


@pytest.mark.parametrize(
    "spec, message",
    [
        (MixtureSpec(datasets=["bgi"]), "unknown dataset 'bgi'; did you mean big"),
        (MixtureSpec(datasets=["big@v7"]), "big@v7 does not exist; big has versions: v1"),
        (MixtureSpec(datasets=["evalset"]), "evaluation data"),
        (MixtureSpec(datasets=["big", "mid"], weights={"big": 0, "mid": 0}), "sum to a positive"),
        (MixtureSpec(datasets=["big"], weights={"big": 1, "x": 2}), "does not select: x"),
        (MixtureSpec(where="true", budget=5000), "budget 5,000 is above the 1,110 rows"),
        (MixtureSpec(where="true", datasets=["big"]), "exactly one"),
        (MixtureSpec(where="true", weighting="temperature", tau=0), "tau must be positive"),
    ],
)
def test_bad_specs(shared, spec, message):
    with pytest.raises(KalmixError, match=message):
        plan_mixture(shared, spec)


def test_unknown_version_and_spec_keys(shared):
    create_mixture(shared, "known", MixtureSpec(datasets=["small"]))
    with pytest.raises(KalmixError, match="known has versions: v1"):
        resolve_mixture(shared, "known@v4")
    with pytest.raises(KalmixError, match="unknown mixture spec key"):
        MixtureSpec.from_dict({"budgett": 3})
    with pytest.raises(KalmixError, match="'budget' must be an integer"):
        MixtureSpec.from_dict({"budget": "many"})
    assert _split_and("a = 1 AND (b OR c and d) and x between 1 and 2 and s = 'x and y'") == [
        "a = 1",
        "(b OR c and d)",
        "x between 1 and 2",
        "s = 'x and y'",
    ]


def test_cli_create_spec_show_list_diff_materialize(cli, cat, tmp_path):
    add_version(cat, "faq", 60)
    add_version(cat, "sts", 30, "general-sts", language="zh")
    spec = tmp_path / "mixture.toml"
    spec.write_text(
        'budget = 40\nseed = 2\n[[dataset]]\nname = "faq@v1"\nweight = 1\n'
        '[[dataset]]\nname = "sts"\nweight = 3\ncap = 20\ninstruction = "Find similar text"\n'
    )
    result = cli("mix", "create", "m", "--spec", str(spec), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert {e["dataset"]: e["rows_taken"] for e in json.loads(result.output)} == {
        "faq": 20,
        "sts": 20,
    }
    assert cli("mix", "list").output.startswith("no mixtures")
    result = cli("mix", "create", "m", "--spec", str(spec))
    assert result.exit_code == 0, result.output
    assert "mix create: 2 datasets -> m@v1: rows 90 -> 40" in result.output
    result = cli("mix", "create", "m", "--where", "task_type = 'retrieval'", "--budget", "10")
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("mix", "show", "m@v1", "--json").output)
    assert {r["language"]: r["rows"] for r in shown["by_language"]} == {"en": 20, "zh": 20}
    assert {r["task_type"] for r in shown["by_task_type"]} == {"retrieval", "sts"}
    assert "by category" in cli("mix", "show", "m").output
    assert json.loads(cli("mix", "list", "--json").output)[0]["versions"] == 2
    result = cli("mix", "diff", "m@v1", "m@v2")
    assert "removed 1, changed 1" in result.output and "rows 40 -> 10 (-30)" in result.output
    result = cli("mix", "materialize", "m@v1", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "out").num_rows == 40
    result = cli("mix", "create", "bad", "--where", "language = 'xx'")
    assert result.exit_code != 0 and "selects none of the" in str(result.exception)
