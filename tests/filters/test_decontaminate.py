import csv
import json
import random
import re

import pyarrow as pa
import pytest

from catalog import versions
from corpus.errors import KalmixError
from corpus.sample import python_docs_records
from corpus.text import normalize
from filters.decontaminate import (
    Decontaminate,
    DecontaminateConfig,
    _hf_tables,
    items_from_path,
    items_from_table,
)
from kalmix.ingest import ingest
from tests.conftest import record_table, write_jsonl


def column(shared_data, name: str, col: str) -> list[str]:
    with open(shared_data / name, encoding="utf-8", newline="") as f:
        return [r[col].strip() for r in csv.DictReader(f)]


def light_edit(text: str, rng: random.Random) -> str:
    """Edits that keep an item recognisable: case, punctuation, spacing, surrounding text."""
    kind = rng.randrange(4)
    if kind == 0:
        return text.upper()
    if kind == 1:
        return re.sub(r"[^\w\s]", "", text).lower()
    if kind == 2:
        return text.replace(" ", "  ") + " ?"
    if len(text.split()) >= 6:  # long enough to be evidence when found inside other text
        return f"Someone asked: {text} What would you answer?"
    return f" {text.title()} "


def training_table(queries, positives, negatives):
    return record_table(queries, positive=positives, negatives=negatives)


def test_planted_stsb_and_banking77_items_removed_and_nothing_else(shared_data):
    rng = random.Random(0)
    stsb = rng.sample(column(shared_data, "stsb/en-test.csv", "sentence1"), 60)
    banking = rng.sample(column(shared_data, "banking77/test.csv", "text"), 60)
    chinese = rng.sample(column(shared_data, "stsb/zh-test.csv", "sentence2"), 20)
    planted = stsb + banking + chinese
    clean = python_docs_records()
    queries = [r["question"] for r in clean] + [None] * len(planted)
    positives = [r["answer"] for r in clean] + [None] * len(planted)
    negatives = [[] for _ in clean] + [[] for _ in planted]
    for i, item in enumerate(planted):  # a third each as query, positive and a negative
        row, edited = len(clean) + i, light_edit(item, rng)
        slot = i % 3
        if slot == 0:
            queries[row] = edited
        elif slot == 1:
            positives[row] = edited
        else:
            negatives[row] = ["an unrelated negative passage about gardening", edited]
    table = training_table(queries, positives, negatives)

    items = items_from_path(shared_data)  # the whole folder: train splits are skipped
    assert not any("train" in i for i in items.column("item").to_pylist()[::500])
    result = Decontaminate(items)(table)

    ids = table.column("id").to_pylist()
    removed = {r["id"]: (r["reason"], json.loads(r["detail"])) for r in result.removed.to_pylist()}
    assert set(removed) == set(ids[len(clean) :])  # all planted rows, nothing else
    assert result.table.num_rows == len(clean)
    for i, item in enumerate(planted):
        reason, detail = removed[ids[len(clean) + i]]
        assert reason in ("contaminated_exact", "contaminated_ngram")
        assert detail["field"] == ("query", "positive", "negatives")[i % 3]
        matched, original = normalize(
            pa.array([detail["eval_text"], item]), tokens=True
        ).to_pylist()
        assert original.startswith(matched[:200]), (item, detail)  # eval_text keeps 300 chars
        assert detail["eval"].split(":")[0].endswith(".csv")


def test_long_items_survive_word_edits_and_short_ones_need_whole_match():
    passage = " ".join(f"word{i}" for i in range(60))
    items = items_from_table(pa.table({"text": [passage, "a man is playing a guitar"]}), "eval")
    edited = passage.replace("word30", "changed").replace("word5 ", "changed ")
    table = training_table(
        [edited, "a man is playing a flute today", "yesterday a man is playing a guitar here"],
        [None] * 3,
        [[]] * 3,
    )
    result = Decontaminate(items, DecontaminateConfig(ngram=13))(table)
    reasons = [json.loads(d)["overlap"] for d in result.removed.column("detail").to_pylist()]
    assert result.removed.column("id").to_pylist() == [
        table["id"][0].as_py(),
        table["id"][2].as_py(),
    ]
    assert 0.5 <= reasons[0] < 1.0 and reasons[1] == 1.0


def test_hf_tables_follow_eval_splits_only():
    datasets = pytest.importorskip("datasets")
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"sentence1": ["train only"], "score": [1.0]}),
            "test": datasets.Dataset.from_dict({"sentence1": ["the test text"], "score": [2.0]}),
        }
    )
    nested = {"en": data}
    found = [items_from_table(t, f"task/{w}").to_pylist() for w, t in _hf_tables(nested, {"test"})]
    assert found == [[{"item": "task/en/test:0:sentence1", "text": "the test text"}]]


def test_cli_decontaminate_against_dataset_file_and_mteb(cli, cat, tmp_path, shared_data):
    test_texts = column(shared_data, "banking77/test.csv", "text")[:5]
    evalset = write_jsonl(tmp_path / "eval.jsonl", [{"text": t, "label": "x"} for t in test_texts])
    ingest(cat, evalset, name="b77-test", category="banking-intent", is_eval=True)
    rows = [{"question": t.upper(), "answer": "yes"} for t in test_texts[:2]]
    rows += [{"question": "How do I bake sourdough bread at home?", "answer": "Slowly."}]
    ingest(cat, write_jsonl(tmp_path / "t.jsonl", rows), name="t", category="faq-retrieval")

    result = cli("decontaminate", "t", "--against", "b77-test")
    assert result.exit_code == 0, result.output
    assert "t@v1 -> t@v2: rows 3 -> 1; removed: contaminated_exact 2" in result.output
    detail = json.loads(
        cat.query("SELECT detail FROM removals WHERE dataset = 't' LIMIT 1").to_pylist()[0][
            "detail"
        ]
    )
    assert detail["eval"].startswith("b77-test@v1:") and detail["eval_text"] in test_texts

    result = cli("decontaminate", "t", "--against", str(shared_data / "stsb" / "en-test.csv"))
    assert "no new version" in result.output and versions.resolve(cat, "t").version == 2
    assert "against itself" in str(cli("decontaminate", "t", "--against", "t").exception)
    error = cli("decontaminate", "t", "--against", "STSBenchmark", "--threshold", "0.5").exception
    assert isinstance(error, KalmixError) and "local Hugging Face cache" in str(error)
    with pytest.raises(KalmixError, match="threshold"):
        DecontaminateConfig(threshold=0)
