"""Ranking-consistency filtering: keep a (query, positive) pair only if the model agrees with it.

For each pair, the positive is ranked among a candidate pool (every positive and negative of the
data, plus an optional larger corpus) by an embedding model; the pair survives when the positive
is within the top `top_k` (KaLM-Embedding's recipe keeps top 50). A positive the model ranks
far down is usually a mislabelled or unrelated pair, the noise that hurts contrastive training
most. Kept rows get `consistency_rank`; removed rows are recorded with their rank.

The rank is exact, not a top-k cut: 1 + the number of pool texts that score strictly above the
positive, counted in blocks (`filters.topk.count_above`), excluding the positive itself and the
query's own text when it is also in the pool (a symmetric pair would otherwise always lose one
place to itself). So `consistency_rank` is meaningful for every row, even far past `top_k`.

This file also holds what mining shares with it: the task types where a (query, positive) pair
means "relevant passage" (`require_pair_tasks`), and the embedded pool (`embed_pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpus.errors import KalmixError
from corpus.operator import Operator, OpResult, split_by_mask
from filters.embedder import Embedder
from filters.topk import count_above, progress_callback

# Task types whose `positive` is a passage relevant to `query`, so ranking it makes sense.
PAIR_TASKS: tuple[str, ...] = ("retrieval", "reranking", "bitext")

_WHY_NOT: dict[str, str] = {
    "sts": "an STS pair carries a graded score, not a relevant passage",
    "pair_classification": "a pair-classification row may be labelled 0 (not a match)",
    "classification": "a classification row has a label, not a positive passage "
    "(turn it into pairs of same-class examples first)",
    "clustering": "a clustering row has a label, not a positive passage "
    "(turn it into pairs of same-cluster examples first)",
}


def require_pair_tasks(table: pa.Table, operation: str) -> None:
    """Refuse data whose rows are not (query, relevant positive) pairs, saying why."""
    types = [t for t in pc.unique(table.column("task_type")).to_pylist() if t not in PAIR_TASKS]
    if types:
        reasons = "; ".join(_WHY_NOT.get(t, f"{t} is not a retrieval-style task") for t in types)
        raise KalmixError(
            f"{operation} applies to retrieval-style pairs ({', '.join(PAIR_TASKS)}), not to "
            f"task type {', '.join(types)}: {reasons}"
        )


@dataclass
class PairEmbeddings:
    """The candidate pool and the vectors that consistency and mining rank with."""

    pool: list[str]  # distinct texts: positives, negatives, then extra pool texts
    pool_vectors: np.ndarray  # float32 [len(pool), dim]
    query_vectors: np.ndarray  # float32 [rows, dim] (zero rows where the pair is incomplete)
    positive: np.ndarray  # int64 [rows]: pool index of the row's positive, -1 if none
    query_in_pool: np.ndarray  # int64 [rows]: pool index of the query text, -1 if absent
    valid: np.ndarray  # bool [rows]: has a non-empty query and positive

    @property
    def positive_scores(self) -> np.ndarray:
        """Cosine of each query with its own positive (nan for incomplete rows)."""
        pos = self.pool_vectors[np.maximum(self.positive, 0)]
        scores = np.einsum("ij,ij->i", self.query_vectors, pos)
        return np.where(self.valid, scores, np.nan).astype(np.float32)

    @property
    def exclude(self) -> np.ndarray:
        """Per-row pool indices never to rank against: the positive and the query's own text."""
        return np.stack([self.positive, self.query_in_pool], axis=1)


def _texts(table: pa.Table, column: str) -> list[str]:
    return [t.strip() if t else "" for t in table.column(column).to_pylist()]


def embed_pairs(
    table: pa.Table, embedder: Embedder, extra_pool: Sequence[str] = (), instructions: bool = False
) -> PairEmbeddings:
    """Embed a table's queries (with instruction prefixes if asked) and its candidate pool."""
    queries, positives = _texts(table, "query"), _texts(table, "positive")
    index: dict[str, int] = {}
    for text in positives:
        if text:
            index.setdefault(text, len(index))
    for negs in table.column("negatives").to_pylist():
        for text in negs or ():
            if text and text.strip():
                index.setdefault(text.strip(), len(index))
    for text in extra_pool:
        if text and text.strip():
            index.setdefault(text.strip(), len(index))
    pool = list(index)
    valid = np.array([bool(q and p) for q, p in zip(queries, positives, strict=True)])
    if not valid.any():
        raise KalmixError("no row has both a query and a positive: nothing to rank")
    pool_vectors = embedder.encode(pool)
    instr = table.column("instruction").to_pylist() if instructions else None
    rows = np.flatnonzero(valid)
    query_vectors = np.zeros((table.num_rows, pool_vectors.shape[1]), np.float32)
    query_vectors[rows] = embedder.encode_queries(
        [queries[i] for i in rows], [instr[i] for i in rows] if instr else None
    )
    return PairEmbeddings(
        pool=pool,
        pool_vectors=pool_vectors,
        query_vectors=query_vectors,
        positive=np.array([index.get(p, -1) for p in positives], np.int64),
        query_in_pool=np.array([index.get(q, -1) for q in queries], np.int64),
        valid=valid,
    )


@dataclass(frozen=True)
class ConsistencyConfig:
    top_k: int = 50  # KaLM-Embedding's recipe: keep pairs whose positive ranks in the top 50
    instructions: bool = False  # prefix queries with their record's instruction

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise KalmixError(f"--top-k must be at least 1, got {self.top_k}")


@dataclass
class ConsistencyFilter(Operator):
    """Operator: drop pairs whose positive ranks below `top_k` for its own query."""

    embedder: Embedder
    config: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    pool: Sequence[str] = ()  # extra candidate texts (a larger corpus), beyond the data's own
    show_progress: bool = False

    def params(self) -> dict:
        """The settings and the model (the pool's datasets are the caller's to add)."""
        c = self.config
        return {"top_k": c.top_k, "instructions": c.instructions, **self.embedder.params()}

    def __call__(self, table: pa.Table) -> OpResult:
        require_pair_tasks(table, "ranking-consistency filtering")
        pairs = embed_pairs(table, self.embedder, self.pool, self.config.instructions)
        positive_scores = pairs.positive_scores
        with progress_callback(table.num_rows, "ranking positives", self.show_progress) as tick:
            above = count_above(
                pairs.query_vectors,
                pairs.pool_vectors,
                np.nan_to_num(positive_scores, nan=np.inf),
                exclude=pairs.exclude,
                progress=tick,
            )
        rank = np.where(pairs.valid, above + 1, 0)
        keep = pairs.valid & (rank <= self.config.top_k)
        reasons: list[str | None] = [None] * table.num_rows
        details: list[dict | None] = [None] * table.num_rows
        for row in np.flatnonzero(~keep):
            if pairs.valid[row]:
                reasons[row] = "consistency"
                details[row] = {
                    "rank": int(rank[row]),
                    "top_k": self.config.top_k,
                    "positive_score": round(float(positive_scores[row]), 4),
                    "pool": len(pairs.pool),
                }
            else:
                reasons[row] = "no_pair"
                details[row] = {"why": "empty query or positive"}
        if "consistency_rank" in table.column_names:
            table = table.drop_columns(["consistency_rank"])
        table = table.append_column("consistency_rank", pa.array(rank, pa.int32()))
        kept, removed = split_by_mask(table, keep, reasons, details)
        valid_ranks = rank[pairs.valid]
        stats = {
            "top_k": self.config.top_k,
            "pool": len(pairs.pool),
            "model": self.embedder.name,
            "embedded": self.embedder.embedded,
            "rank_p50": float(np.median(valid_ranks)),
            "rank_p90": float(np.percentile(valid_ranks, 90)),
            "removed": int((~keep).sum()),
        }
        return OpResult(kept, removed, stats)
