"""Reading the evaluation files into the rows and datasets the local tasks evaluate.

Every file is a UTF-8 CSV with a header. `limit` (a quick check, `kalmix eval run --limit`)
keeps a seeded random sample of rows, since files are often sorted by label. The retrieval and
reranking tasks are derived from STS-B pairs here (`stsb_search_split`).
"""

from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path
from typing import Any

from corpus.errors import KalmixError

SEED = 42

# STS-B pairs scored at least this (0-5 scale) count as relevant in the derived search tasks.
RELEVANT_SCORE = 4.0
# Candidates per query in the derived reranking task: its relevant sentences, then the most
# lexically similar other sentences (character n-gram TF-IDF), so that lexical overlap alone
# does not solve it.
RERANK_CANDIDATES = 20


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV with a header (quoted fields may hold line breaks: banking77)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise KalmixError(f"cannot read evaluation file {path}: {err}") from None


def _columns(rows: list[dict[str, str]], path: Path, *names: str) -> None:
    if rows and not set(names) <= set(rows[0]):
        raise KalmixError(
            f"{path} lacks column(s) {', '.join(sorted(set(names) - set(rows[0])))}; "
            f"it has {', '.join(rows[0])}"
        )


def _sample(rows: list[dict[str, str]], limit: int | None) -> list[dict[str, str]]:
    """A seeded random sample of `limit` rows (files are often sorted by label)."""
    if limit is None or len(rows) <= limit:
        return rows
    keep = sorted(random.Random(SEED).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def read_pairs(path: Path, score_column: str, limit: int | None) -> Any:
    """A `datasets.Dataset` of sentence pairs and their float scores."""
    from datasets import Dataset

    rows = read_csv(path)
    _columns(rows, path, "sentence1", "sentence2", score_column)
    rows = _sample(rows, limit)
    return Dataset.from_dict(
        {
            "sentence1": [r["sentence1"] for r in rows],
            "sentence2": [r["sentence2"] for r in rows],
            "score": [float(r[score_column]) for r in rows],
        }
    )


def read_labelled(path: Path, label_column: str, limit: int | None) -> tuple[list[str], list[str]]:
    """(texts, labels) of a classification file."""
    rows = read_csv(path)
    _columns(rows, path, "text", label_column)
    rows = _sample(rows, limit)
    return [r["text"] for r in rows], [r[label_column] for r in rows]


def _text_id(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def stsb_search_split(path: Path, limit: int | None, rerank: bool) -> dict[str, Any]:
    """Retrieval (or reranking) data from one STS-B file.

    Queries: distinct first sentences with a pair scored >= RELEVANT_SCORE (identical pairs
    dropped); relevant: the second sentences of those pairs; corpus: every distinct sentence of
    the (sampled) pairs. Ids are text hashes, so a query's own sentence shares its id and is
    ignored (`ignore_identical_ids`). Reranking adds `top_ranked`: the relevant sentences plus
    the most similar others by character n-gram TF-IDF, RERANK_CANDIDATES in all.
    """
    from datasets import Dataset

    rows = read_csv(path)
    _columns(rows, path, "sentence1", "sentence2", "score")
    rows = _sample(rows, limit)
    texts = list(dict.fromkeys(t.strip() for r in rows for t in (r["sentence1"], r["sentence2"])))
    relevant: dict[str, dict[str, int]] = {}
    query_text: dict[str, str] = {}
    for r in rows:
        s1, s2 = r["sentence1"].strip(), r["sentence2"].strip()
        if float(r["score"]) >= RELEVANT_SCORE and s1 != s2:
            relevant.setdefault(_text_id(s1), {})[_text_id(s2)] = 1
            query_text[_text_id(s1)] = s1
    qids = list(relevant)
    top_ranked = None
    if rerank:
        from sklearn.feature_extraction.text import TfidfVectorizer

        ids = [_text_id(t) for t in texts]
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)).fit(texts)
        sims = (
            vectorizer.transform([query_text[q] for q in qids]) @ vectorizer.transform(texts).T
        ).toarray()
        top_ranked = {}
        for row, qid in enumerate(qids):
            candidates = list(relevant[qid])
            for col in sims[row].argsort()[::-1]:
                if len(candidates) >= RERANK_CANDIDATES:
                    break
                if ids[col] != qid and ids[col] not in relevant[qid]:
                    candidates.append(ids[col])
            top_ranked[qid] = candidates
    return {
        "corpus": Dataset.from_dict({"id": [_text_id(t) for t in texts], "text": texts}),
        "queries": Dataset.from_dict({"id": qids, "text": [query_text[q] for q in qids]}),
        "relevant_docs": relevant,
        "top_ranked": top_ranked,
    }
