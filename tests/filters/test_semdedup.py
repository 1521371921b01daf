import json

import numpy as np
import pytest

from catalog import versions
from catalog.queries import versions_of
from catalog.versions import Commit, DatasetInfo
from corpus.errors import KalmixError
from corpus.schema import RECORD_SCHEMA
from filters.semdedup import (
    DEFAULT_THRESHOLD,
    SemanticDedup,
    SemDedupConfig,
    exact_pairs,
    kmeans_pairs,
    pair_recall,
)
from tests.conftest import write_jsonl
from tests.filters.embedding_data import banking_pairs, records, stsb_dev


@pytest.fixture
def stsb(shared_data):
    rows = stsb_dev(shared_data)
    sentences = list(dict.fromkeys(s for a, b, _ in rows for s in (a, b)))
    return rows, sentences


def _keeper_of(result) -> dict[str, str]:
    """Row id -> id of the row that represents it after dedup."""
    keeper = {i: i for i in result.table.column("id").to_pylist()}
    for row in result.removed.to_pylist():
        keeper[row["id"]] = json.loads(row["detail"])["dup_of"]
    return keeper


def test_stsb_same_meaning_pairs_merge_and_unrelated_do_not(stsb, embedder):
    rows, sentences = stsb
    table = records(sentences, [None] * len(sentences), task_type="sts")
    id_of = dict(zip(sentences, table.column("id").to_pylist(), strict=True))
    same = np.array([g == 5.0 for _, _, g in rows])
    unrelated = np.array([g <= 1.0 for _, _, g in rows])
    partly = np.array([3.0 <= g < 4.0 for _, _, g in rows])
    curve = {}
    for threshold in (0.75, 0.8, DEFAULT_THRESHOLD, 0.9, 0.95):
        result = SemanticDedup(embedder, SemDedupConfig(threshold=threshold))(table)
        keeper = _keeper_of(result)
        together = np.array([keeper[id_of[a]] == keeper[id_of[b]] for a, b, _ in rows])
        curve[threshold] = (
            together[same].mean(),
            together[partly].mean(),
            together[unrelated].mean(),
        )
        if threshold == DEFAULT_THRESHOLD:
            at_default = result
    print(f"\nSTS-B en dev, {len(sentences)} sentences; share of pairs with one keeper:")
    print("threshold  gold=5.0 (same)  gold 3-4 (partly)  gold<=1.0 (unrelated)")
    for threshold, (s, p, u) in curve.items():
        print(f"{threshold:9.2f}  {s:15.1%}  {p:17.1%}  {u:21.1%}")
    s, _, u = curve[DEFAULT_THRESHOLD]
    assert s >= 0.8 and u <= 0.01
    details = [json.loads(d) for d in at_default.removed.column("detail").to_pylist()]
    assert all(d["cosine"] >= DEFAULT_THRESHOLD - 1e-4 for d in details)  # never by a chain
    assert at_default.stats["route"] == "exact"


def test_kmeans_route_recall_of_exact_pairs(stsb, shared_data, embedder):
    _, sentences = stsb
    banking = banking_pairs(shared_data).column("query").to_pylist()
    for texts in (sentences, banking):
        x = embedder.encode(texts)
        for threshold in (0.75, DEFAULT_THRESHOLD):
            exact = exact_pairs(x, threshold)
            approx = kmeans_pairs(x, threshold, seed=0)
            recall = pair_recall(approx, exact)
            print(
                f"\n{len(texts)} texts @ {threshold}: k-means recall {recall:.4f} of {len(exact)}"
            )
            assert recall >= 0.95 and len(exact) > 50
            again = kmeans_pairs(x, threshold, seed=0)
            assert np.array_equal(again.left, approx.left) and np.array_equal(
                again.right, approx.right
            )


def test_identical_texts_and_keeper_rule(embedder):
    texts = ["Reset my PIN", "What is the weather like in Lisbon?", "Reset my PIN", "", "Sunny"]
    table = records(texts, ["a", "x", "a longer positive", "c", "d"])
    result = SemanticDedup(embedder, SemDedupConfig(route="kmeans"))(table)
    # identical queries collapse onto the copy with the longer query + positive
    ids = table.column("id").to_pylist()
    assert result.table.column("id").to_pylist() == [ids[1], ids[2], ids[3], ids[4]]
    [removed] = result.removed.to_pylist()
    detail = json.loads(removed["detail"])
    assert removed["id"] == ids[0] and detail["dup_of"] == ids[2]
    assert detail["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result.stats["route"] == "kmeans"


def test_also_keeps_several_queries_of_one_passage(embedder):
    # WordNet's lemmas of one synset share its gloss: distinct training pairs, not copies
    gloss = "a motor vehicle with four wheels; usually propelled by an internal combustion engine"
    queries = ["car", "machine", "car", "what is a bank", "what is a bank"]
    positives = [gloss, gloss, gloss, "sloping land beside a body of water", ""]
    table = records(queries, positives)
    ids = table.column("id").to_pylist()
    on_positive = SemanticDedup(embedder, SemDedupConfig(field="positive"))(table)
    assert on_positive.table.num_rows == 3  # one row per gloss, and the empty one
    pairs = SemanticDedup(embedder, SemDedupConfig(field="positive", also=("query",)))(table)
    # only the repeated (car, gloss) pair goes; "bank" rows differ in their positive
    assert sorted(pairs.table.column("id").to_pylist()) == sorted(ids[1:])
    [removed] = pairs.removed.to_pylist()
    assert json.loads(removed["detail"])["dup_of"] == ids[2]
    assert pairs.stats["also"] == ["query"]
    assert "also" not in SemanticDedup(embedder, SemDedupConfig()).params()
    with pytest.raises(KalmixError, match="repeats --field"):
        SemDedupConfig(field="query", also=("query",))


def _ingest(cli, tmp_path, name: str, rows: list[dict], category: str = "faq-retrieval") -> None:
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    result = cli("ingest", str(src), "--name", name, "--category", category)
    assert result.exit_code == 0, result.output


def test_cli_across_datasets_records_dup_of(cli, cat, tmp_path):
    datasets = {
        "curated": [
            {"question": "How do I reset my card PIN?", "answer": "In the app, under Card > PIN."},
            {"question": "What are your opening hours?", "answer": "9 to 17 on weekdays."},
        ],
        "scraped": [
            {"question": "How can I reset my card PIN?", "answer": "App > Card."},
            {"question": "Is there a fee for foreign payments?", "answer": "No."},
        ],
    }
    for name, rows in datasets.items():
        _ingest(cli, tmp_path, name, rows)
    result = cli("semdedup", "--across", "name IN ('curated', 'scraped')", "--field", "query")
    assert result.exit_code == 0, result.output
    assert "-> scraped@v2: rows 4 -> 3; removed: semantic_duplicate 1" in result.output
    assert versions_of(cat, "curated").num_rows == 1  # lost nothing: no new version
    detail = json.loads(
        cat.query("SELECT detail FROM removals WHERE dataset = 'scraped'").to_pylist()[0]["detail"]
    )
    assert detail["dup_of_dataset"] == "curated" and detail["cosine"] >= DEFAULT_THRESHOLD


def test_cli_bad_input_is_one_clear_error_and_no_new_version(cli, cat, tmp_path):
    _ingest(
        cli,
        tmp_path,
        "faq",
        [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}],
    )
    _ingest(cli, tmp_path, "intents", [{"text": "reset pin", "label": "pin"}], "banking-intent")
    info = DatasetInfo("void", "faq-retrieval", "retrieval")
    versions.commit(cat, Commit("void", RECORD_SCHEMA.empty_table(), "ingest", {}, info=info))

    cases = [
        (("faq", "--field", "nope"), "does not exist"),
        (("faq", "--field", "positive", "--also", "nope"), "does not exist"),
        (("intents", "--field", "positive"), "empty in every row"),
        (("faq", "--threshold", "0"), "must be in (0, 1]"),
        (("faq", "--threshold", "1.5"), "must be in (0, 1]"),
        (("void",), "is empty"),
        (("faq", "--model", str(tmp_path / "no-model")), "model folder not found"),
        ((), "one of the two"),
    ]
    for args, message in cases:
        result = cli("semdedup", *args)
        assert isinstance(result.exception, KalmixError), (args, result.output)
        assert message in str(result.exception) and "\n" not in str(result.exception)
    for name in ("faq", "intents", "void"):
        assert versions_of(cat, name).num_rows == 1


def test_cli_prefer_takes_the_keeper_rules_of_dedup_and_is_checked_first(cli, cat, tmp_path):
    _ingest(cli, tmp_path, "faq", [{"question": "What are your hours?", "answer": "9 to 17."}])
    bad = cli("semdedup", "faq", "--prefer", "clean")
    assert "--prefer must be one of cleanest, longest, first, got 'clean'" in str(bad.exception)
    assert "cleanest" in cli("semdedup", "--help").output
