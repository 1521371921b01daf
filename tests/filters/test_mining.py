import json

import numpy as np
import pytest

from catalog import versions
from catalog.queries import versions_of
from catalog.versions import Commit, DatasetInfo
from corpus.embedding import default_model_path
from corpus.errors import KalmixError
from corpus.schema import RECORD_SCHEMA
from filters.mining import HardNegativeMiner, MiningConfig, parse_range
from tests.conftest import write_jsonl
from tests.filters.embedding_data import banking_pairs, records, session_embedder


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return session_embedder(tmp_path_factory.getbasetemp())


@pytest.fixture
def banking(shared_data):
    return banking_pairs(shared_data)


def _false_negative_share(table, result) -> float:
    """Share of mined negatives whose Banking77 intent is the positive's (a false negative)."""
    intent = dict(
        zip(table.column("query").to_pylist(), table.column("label").to_pylist(), strict=True)
    )
    mined = [(row["label"], neg) for row in result.table.to_pylist() for neg in row["negatives"]]
    return float(np.mean([intent[neg] == label for label, neg in mined]))


def test_margin_guard_lowers_false_negatives_on_banking77(banking, embedder):
    without = HardNegativeMiner(embedder, MiningConfig(margin=None))(banking)
    guarded = HardNegativeMiner(embedder, MiningConfig(margin=0.1))(banking)
    share_without = _false_negative_share(banking, without)
    share_guarded = _false_negative_share(banking, guarded)
    print(
        f"\nBanking77 {banking.num_rows} pairs, 7 negatives from ranks 10:100 of "
        f"{without.stats['pool']} texts: same-intent (false) negatives {share_without:.1%} "
        f"without the guard, {share_guarded:.1%} with margin 0.1 "
        f"({guarded.stats['rows_short']} rows got fewer than 7)"
    )
    assert share_without < 0.15  # mostly from other intents
    assert share_guarded < share_without


def test_negatives_respect_window_guard_and_seed(banking, embedder):
    table = banking.slice(0, 300)
    config = MiningConfig(negatives=5, start=5, end=60, margin=0.05)
    first = HardNegativeMiner(embedder, config)(table)
    assert HardNegativeMiner(embedder, config)(table).table.equals(first.table)
    other_seed = HardNegativeMiner(
        embedder, MiningConfig(negatives=5, start=5, end=60, margin=0.05, seed=1)
    )(table)
    assert not other_seed.table.column("negatives").equals(first.table.column("negatives"))
    assert first.removed.num_rows == 0 and first.table.num_rows == 300
    for row in first.table.to_pylist():
        mining = json.loads(row["meta"])["mining"]
        negs = row["negatives"]
        assert len(negs) <= 5 and len(set(negs)) == len(negs)
        assert row["positive"] not in negs and row["query"] not in negs
        assert all(5 < r <= 60 for r in mining["ranks"]) and len(mining["ranks"]) == len(negs)
        assert all(s <= mining["positive_score"] - 0.05 + 1e-4 for s in mining["scores"])


def test_teacher_scores_for_positive_and_negatives(banking, embedder):
    table = banking.slice(0, 100)
    result = HardNegativeMiner(embedder, MiningConfig(), teacher=embedder)(table)
    for row in result.table.to_pylist():
        meta = json.loads(row["meta"])
        teacher, mining = meta["teacher_scores"], meta["mining"]
        assert len(teacher) == 1 + len(row["negatives"])
        # the teacher is the same model here, so it must agree with the mined scores
        np.testing.assert_allclose(
            teacher, [mining["positive_score"], *mining["scores"]], atol=2e-3
        )
    assert result.stats["teacher"] == embedder.name


def test_bad_config_and_task_types_are_refused(embedder):
    with pytest.raises(KalmixError, match="widen the range"):
        MiningConfig(negatives=7, start=10, end=12)
    with pytest.raises(KalmixError, match="START:END"):
        parse_range("10-100")
    with pytest.raises(KalmixError, match="--relative"):
        MiningConfig(relative=1.5)
    clustering = records(["a"], [None], task_type="clustering", label=["x"])
    with pytest.raises(KalmixError, match="hard-negative mining applies to retrieval-style"):
        HardNegativeMiner(embedder)(clustering)


def test_cli_mines_into_a_new_version(cli, cat, tmp_path, banking):
    rows = [
        {"question": q, "answer": p}
        for q, p in zip(
            banking.column("query").to_pylist()[:40],
            banking.column("positive").to_pylist()[:40],
            strict=True,
        )
    ]
    src = write_jsonl(tmp_path / "b.jsonl", rows)
    assert cli("ingest", str(src), "--name", "b", "--category", "faq-retrieval").exit_code == 0
    teacher = str(default_model_path())  # any local model folder; here the same model
    args = ("--negatives", "3", "--range", "2:20", "--margin", "0.05", "--teacher", teacher)
    result = cli("mine", "b", *args)
    assert result.exit_code == 0, result.output
    assert "mine: b@v1 -> b@v2: rows 40 -> 40" in result.output
    v2 = versions.resolve(cat, "b@v2")
    assert v2.params["negatives"] == 3 and v2.params["range"] == "2:20"
    assert v2.params["teacher"] == teacher
    table = v2.read()
    assert sum(len(n) for n in table.column("negatives").to_pylist()) > 40
    meta = json.loads(table.column("meta")[0].as_py())
    negatives = table.column("negatives")[0].as_py()
    assert "mining" in meta and len(meta["teacher_scores"]) == 1 + len(negatives)


def test_cli_bad_input_is_one_clear_error_and_no_new_version(cli, cat, tmp_path):
    src = write_jsonl(tmp_path / "faq.jsonl", [{"question": "q", "answer": "a"}])
    assert cli("ingest", str(src), "--name", "faq", "--category", "faq-retrieval").exit_code == 0
    info = DatasetInfo("void", "faq-retrieval", "retrieval")
    versions.commit(cat, Commit("void", RECORD_SCHEMA.empty_table(), "ingest", {}, info=info))
    missing = str(tmp_path / "no-model")
    cases = [
        (("mine", "faq", "--range", "20"), "START:END"),
        (("mine", "faq", "--range", "30:20"), "0 <= START < END"),
        (("mine", "faq", "--negatives", "0"), "at least 1"),
        (("mine", "faq", "--margin", "-0.1"), "--margin must be >= 0"),
        (("mine", "faq", "--index", "hnsw"), "--index must be one of"),
        (("mine", "faq", "--model", missing), "model folder not found"),
        (("mine", "faq", "--teacher", missing), "model folder not found"),
        (("mine", "void"), "is empty"),
        (("mine", "faq@v7"), "does not exist"),
        (("filter", "consistency", "faq", "--top-k", "0"), "--top-k must be at least 1"),
        (("filter", "consistency", "faq", "--model", missing), "model folder not found"),
        (("filter", "consistency", "faq", "--pool", "nope"), "unknown dataset"),
        (("filter", "consistency", "void"), "is empty"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert isinstance(result.exception, KalmixError), (args, result.output)
        assert message in str(result.exception) and "\n" not in str(result.exception), args
    for name in ("faq", "void"):
        assert versions_of(cat, name).num_rows == 1
