"""Shared by the embedding tests: one embedder per session, and real data turned into records.

The model is loaded once per process (`filters.embedder` keeps it) and the embedding cache is
one folder for the whole session, so STS-B and Banking77 texts are embedded once however many
tests rank, mine or dedup them. The data loaders are cached too (their results are immutable).
"""

from __future__ import annotations

import csv
import functools
import random
from pathlib import Path

import pyarrow as pa

from corpus.schema import attach_ids
from filters.embedder import Embedder

BANKING_ROWS = 600  # 75 intents, ~8 texts each: enough same-intent candidates to measure


@functools.cache
def session_embedder(cache_root: Path) -> Embedder:
    return Embedder(cache_dir=cache_root / "embedding-cache")


def records(
    query: list[str],
    positive: list[str | None],
    *,
    task_type: str = "retrieval",
    label: list[str] | None = None,
    negatives: list[list[str]] | None = None,
    source: str = "test",
) -> pa.Table:
    """Rows in the record schema (ids attached) from plain lists."""
    n = len(query)
    return attach_ids(
        pa.table(
            {
                "task_type": [task_type] * n,
                "category": ["test"] * n,
                "instruction": pa.array([None] * n, pa.string()),
                "query": query,
                "positive": pa.array(positive, pa.string()),
                "negatives": pa.array(negatives or [[] for _ in range(n)], pa.list_(pa.string())),
                "score": pa.array([None] * n, pa.float64()),
                "label": pa.array(label or [None] * n, pa.string()),
                "language": ["en"] * n,
                "source": [source] * n,
                "meta": ["{}"] * n,
            }
        )
    )


@functools.cache
def banking_pairs(shared_data: Path, rows: int = BANKING_ROWS, seed: int = 0) -> pa.Table:
    """Banking77 train turned into (text, another text of the same intent) pairs; label = intent."""
    with open(shared_data / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        data = [(r["text"].strip(), r["category"]) for r in csv.DictReader(fh)]
    rng = random.Random(seed)
    rng.shuffle(data)
    data = data[:rows]
    by_intent: dict[str, list[str]] = {}
    for text, intent in data:
        by_intent.setdefault(intent, []).append(text)
    query, positive, label = [], [], []
    for text, intent in data:
        others = [t for t in by_intent[intent] if t != text]
        if others:
            query.append(text)
            positive.append(rng.choice(others))
            label.append(intent)
    return records(query, positive, label=label)


@functools.cache
def stsb_dev(shared_data: Path) -> tuple[tuple[str, str, float], ...]:
    """STS-B English dev: (sentence1, sentence2, gold score 0-5)."""
    with open(shared_data / "stsb" / "en-dev.csv", newline="", encoding="utf-8") as fh:
        return tuple(
            (r["sentence1"].strip(), r["sentence2"].strip(), float(r["score"]))
            for r in csv.DictReader(fh)
        )


@functools.cache
def stsb_mixed_pairs(
    shared_data: Path, languages: tuple[str, ...] = ("en", "de", "fr"), rows: int = 90
) -> pa.Table:
    """A mixed-language retrieval pool: STS-B dev pairs scored >= 4 as (query, positive).

    Row i of the dev set goes to language i mod len(languages) (no sentence is in the pool in
    two languages, the topics are spread over them); `language` says which.
    """
    per_language = {}
    for lang in languages:
        with open(shared_data / "stsb" / f"{lang}-dev.csv", newline="", encoding="utf-8") as fh:
            per_language[lang] = list(csv.DictReader(fh))
    query, positive, language = [], [], []
    for i, row in enumerate(per_language[languages[0]]):
        lang = languages[i % len(languages)]
        r = per_language[lang][i]
        s1, s2 = r["sentence1"].strip(), r["sentence2"].strip()
        if float(row["score"]) >= 4 and s1 != s2:
            query.append(s1)
            positive.append(s2)
            language.append(lang)
        if len(query) == rows:
            break
    table = records(query, positive, source="stsb-mixed")
    return table.set_column(
        table.schema.get_field_index("language"), "language", pa.array(language, pa.string())
    )
