"""The semantic quality gate on hand-written retrieval records, with the real default embedder
(all-MiniLM-L6-v2)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from corpus.schema import REMOVALS_SCHEMA, attach_ids
from filters.embedder import Embedder
from synth.gate import QualityGate
from synth.prompts import load_task_template

MEALS = "Given a question about planning cheap family meals, retrieve advice that answers it."
BACKUPS = "Given a question about backing up a shop's computers, retrieve instructions for it."


def _records(rows: list[tuple[str, str, str, str]]) -> pa.Table:
    n = len(rows)
    return attach_ids(
        pa.table(
            {
                "task_type": ["retrieval"] * n,
                "category": ["synthetic"] * n,
                "instruction": [r[0] for r in rows],
                "query": [r[1] for r in rows],
                "positive": [r[2] for r in rows],
                "negatives": [[r[3]] for r in rows],
                "score": pa.nulls(n, pa.float64()),
                "label": pa.nulls(n, pa.string()),
                "language": ["en"] * n,
                "source": ["synth"] * n,
                "meta": ["{}"] * n,
            }
        )
    )


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(None, tmp_path_factory.mktemp("cache"))


def test_gate_keeps_good_examples_and_names_each_failure(embedder):
    good = (
        MEALS,
        "How can I feed a family of four for fifty dollars a week?",
        "Plan the week around cheap staples such as rice, beans, eggs and seasonal vegetables, "
        "cook in batches and use leftovers for lunches.",
        "Beans are a good source of protein and fibre.",
    )
    rows = [
        good,
        # the one-shot example with one word changed
        (
            MEALS,
            "How long should I boil an egg for a soft yolk?",
            "For a runny yolk, lower the egg into boiling water and cook it for six minutes. "
            "Then cool it in cold water for one minute before peeling it.",
            "Eggs are a good source of protein and keep in the fridge for up to five weeks.",
        ),
        # the first record's query again, reworded a little
        (
            MEALS,
            "How can I feed my family of four on fifty dollars a week?",
            "Buy store brands, plan meals before shopping and cook soups and stews in bulk.",
            "Many families spend more than they plan on groceries every week.",
        ),
        # an example about cooking (the one-shot task) for a task about computer backups
        (
            BACKUPS,
            "What is a good recipe for a quick vegetable soup?",
            "Soften onions and carrots in oil, add stock and chopped vegetables, simmer for "
            "twenty minutes and blend.",
            "Vegetable soup freezes well for up to three months.",
        ),
        # the negative answers the query, the positive does not
        (
            BACKUPS,
            "How often should a small shop back up its computers?",
            "Our shop sells shoes, bags and belts in three sizes.",
            "Back up the shop's computers every night, and keep one copy off site each week.",
        ),
    ]
    table = _records(rows)
    template = load_task_template("retrieval")
    result = QualityGate(embedder.encode, template, model=embedder.name)(table)
    assert result.table.column("query").to_pylist() == [good[1]]
    assert result.removed.schema.equals(REMOVALS_SCHEMA)
    reasons = result.removed.column("reason").to_pylist()
    assert reasons == ["copied_example", "copied_example", "task_mismatch", "positive_not_first"]
    details = [json.loads(d) for d in result.removed.column("detail").to_pylist()]
    assert details[0]["of"] == "one-shot example" and details[0]["similarity"] >= 0.95
    assert details[1]["dup_of"] == table.column("id")[0].as_py()
    assert details[2]["shot_task"] > details[2]["own_task"]
    assert details[3]["negative"] >= details[3]["positive"]
    assert result.stats["checked"] == 5 and result.stats["passed"] == 1
    assert result.stats["rejected_by_reason"] == {
        "copied_example": 2,
        "task_mismatch": 1,
        "positive_not_first": 1,
    }
