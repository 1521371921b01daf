import json

import numpy as np
import pyarrow as pa
import pytest

from catalog import versions
from corpus.errors import KalmixError
from filters.consistency import ConsistencyConfig, ConsistencyFilter
from tests.conftest import write_jsonl
from tests.filters.embedding_data import records, stsb_dev


def test_corrupted_pairs_are_removed_far_more_often_than_clean(shared_data, embedder):
    """STS-B dev pairs with gold >= 4 as (query, positive); 20% get a random sentence instead."""
    rows = stsb_dev(shared_data)
    everything = sorted({s for a, b, _ in rows for s in (a, b)})
    pairs = [(a, b) for a, b, gold in rows if gold >= 4.0]
    rng = np.random.default_rng(0)
    corrupt = rng.random(len(pairs)) < 0.2
    positives = [
        everything[rng.integers(len(everything))] if bad else b
        for (_, b), bad in zip(pairs, corrupt, strict=True)
    ]
    table = records([a for a, _ in pairs], positives).append_column("corrupt", pa.array(corrupt))
    # pool: the pairs' own positives plus every STS-B dev sentence (the --pool path)
    result = ConsistencyFilter(embedder, ConsistencyConfig(top_k=50), pool=everything)(table)
    kept_corrupt = np.array(result.table.column("corrupt").to_pylist())
    removed_corrupt = 1 - kept_corrupt.sum() / corrupt.sum()
    removed_clean = 1 - (~kept_corrupt).sum() / (~corrupt).sum()
    print(
        f"\nconsistency top-50 over {result.stats['pool']} texts: removed {removed_corrupt:.1%} "
        f"of {corrupt.sum()} corrupted pairs, {removed_clean:.1%} of {(~corrupt).sum()} clean pairs"
    )
    assert removed_corrupt >= 0.9 and removed_clean <= 0.1
    assert removed_corrupt >= 5 * removed_clean
    ranks = result.table.column("consistency_rank").to_numpy()
    assert ranks.min() >= 1 and ranks.max() <= 50
    detail = json.loads(result.removed.column("detail")[0].as_py())
    assert detail["rank"] > 50 and detail["top_k"] == 50


def test_rank_excludes_the_positive_and_the_query_itself(embedder):
    # symmetric pairs: each query is also another row's positive; it must not outrank itself
    texts = ["How do I block my card?", "My card was stolen, block it", "What is the weather?"]
    table = records(texts, [texts[1], texts[0], "Sunny with light wind"])
    result = ConsistencyFilter(embedder, ConsistencyConfig(top_k=1))(table)
    assert result.table.column("consistency_rank").to_pylist() == [1, 1, 1]


def test_task_types_where_it_does_not_apply_are_refused(embedder):
    sts = records(["a cat sits"], ["a cat is sitting"], task_type="sts")
    with pytest.raises(KalmixError, match="graded score"):
        ConsistencyFilter(embedder)(sts)
    classification = records(["reset my pin"], [None], task_type="classification", label=["pin"])
    with pytest.raises(KalmixError, match="pairs of same-class examples"):
        ConsistencyFilter(embedder)(classification)
    with pytest.raises(KalmixError, match="--top-k"):
        ConsistencyConfig(top_k=0)


FAQ = [
    ("How do I reset my online banking password?", "Use 'Forgot password' on the login page."),
    ("What is the daily ATM withdrawal limit?", "You can withdraw up to 500 euros per day."),
    ("How can I order a new debit card?", "Order a replacement card in the app under Cards."),
    ("Can I change my registered phone number?", "Update your phone number in Settings > Profile."),
    ("How long does an international transfer take?", "SEPA transfers arrive within one day."),
    ("Where can I see my IBAN?", "Your IBAN is shown on the account overview screen."),
    ("How do I dispute a card payment?", "The cat slept on the warm windowsill all afternoon."),
]


def test_cli_records_ranks_and_reembeds_only_new_texts(cli, cat, tmp_path):
    rows = [{"question": q, "answer": a} for q, a in FAQ]
    src = write_jsonl(tmp_path / "faq.jsonl", rows)
    assert cli("ingest", str(src), "--name", "faq", "--category", "faq-retrieval").exit_code == 0
    result = cli("filter", "consistency", "faq", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "faq@v1 -> faq@v2: rows 7 -> 6; removed: consistency 1" in result.output
    assert "14 texts embedded" in result.output

    removals = cat.query("SELECT id, detail FROM removals WHERE dataset = 'faq'").to_pylist()
    assert len(removals) == 1 and json.loads(removals[0]["detail"])["rank"] > 2
    v2 = versions.resolve(cat, "faq@v2").read()
    assert "consistency_rank" in v2.column_names

    more = [*rows, {"question": "Is there a fee for card payments abroad?", "answer": "No fee."}]
    write_jsonl(src, more)
    assert cli("ingest", str(src), "--name", "faq", "--category", "faq-retrieval").exit_code == 0
    result = cli("filter", "consistency", "faq@v3", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "2 texts embedded" in result.output  # only the new question and answer


def test_cli_refuses_sts_data_before_loading_a_model(cli, ws, tmp_path):
    src = write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 3}])
    assert cli("ingest", str(src), "--name", "s", "--category", "multilingual-sts").exit_code == 0
    result = cli("filter", "consistency", "s")
    assert isinstance(result.exception, KalmixError) and "graded score" in str(result.exception)
