"""Dedup operator: exact duplicates first, then MinHash LSH near-duplicates.

1. Exact pass (`filters.exact`): normalised-text groups; one keeper each.
2. Near-duplicate pass over the survivors:
   - shingles per record by script (word n-grams, or character n-grams for CJK and mixed
     text), MinHash signatures identical to datasketch's (`filters.minhash`), computed batch by
     batch on a process pool, kept in one uint32 matrix;
   - LSH with datasketch's band/row choice for the threshold (its `_optimal_param`, with
     false negatives weighted above false positives: see `filters.minhash.LSH_WEIGHTS`);
     candidate pairs are documents sharing a band bucket (polars group-by);
   - every candidate pair is verified: its estimated Jaccard (share of equal signature
     values) must reach the threshold, otherwise it is dropped;
   - verified pairs form clusters (union-find, `filters.clusters`) and the keeper rule picks
     one survivor per cluster. A member is removed only if its own estimated Jaccard with the
     keeper reaches the threshold; members that joined the cluster through a chain (A~B, B~C,
     but A and C too far apart) stay and are clustered again among themselves, round after
     round, so no removal is ever justified by transitivity alone.

Removals record `dup_of` (the keeper's id, and its dataset under `--across`) and the
estimated Jaccard with it. An exact duplicate's `dup_of` is the identical copy that survived
the exact pass; if that copy was then removed as a near duplicate, its own removal names the
row it duplicates. Records with no text in the chosen fields are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from corpus.errors import KalmixError
from corpus.operator import OpResult
from filters.clusters import (
    KeeperRule,
    Keepers,
    choose_keepers,
    clusters_from_pairs,
    duplicate_details,
    split_rows,
)
from filters.exact import exact_dedup
from filters.minhash import (
    LSH_WEIGHTS,
    MinHashConfig,
    candidate_pairs,
    estimated_jaccard,
    lsh_params,
    signatures_parallel,
)
from filters.text import record_text

REASON = "near_duplicate"


@dataclass(frozen=True)
class DedupConfig:
    fields: tuple[str, ...] = ("query", "positive")
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    hash: Literal["poly", "sha1"] = "poly"
    lsh_weights: tuple[float, float] = LSH_WEIGHTS
    near: bool = True  # False: exact pass only
    prefer: Literal["longest", "first"] = "longest"
    priority: tuple[str, ...] = ()
    priority_column: str = "source"
    workers: int = 0  # signature processes; 0 = one per core
    batch_docs: int = 4096
    minhash: MinHashConfig = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise KalmixError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.prefer not in ("longest", "first"):
            raise KalmixError(f"--prefer must be longest or first, got {self.prefer!r}")
        if len(self.lsh_weights) != 2 or min(self.lsh_weights) < 0 or sum(self.lsh_weights) <= 0:
            raise KalmixError(
                f"--lsh-weights must be two non-negative numbers, got {self.lsh_weights}"
            )
        minhash = MinHashConfig(self.num_perm, self.seed, self.ngram, self.hash)
        object.__setattr__(self, "minhash", minhash)

    @property
    def rule(self) -> KeeperRule:
        return KeeperRule(self.prefer, self.fields, self.priority, self.priority_column)

    def params(self) -> dict:
        """What the catalog records as the operation's parameters."""
        return {
            "fields": list(self.fields),
            "threshold": self.threshold,
            "num_perm": self.num_perm,
            "ngram": self.ngram,
            "seed": self.seed,
            "hash": self.hash,
            "lsh_weights": list(self.lsh_weights),
            "near": self.near,
            "prefer": self.prefer,
            "priority": list(self.priority),
            "priority_column": self.priority_column,
        }


@dataclass
class NearDuplicates:
    """Outcome of the near-duplicate pass over n rows."""

    keepers: Keepers  # who stays, and which row each removed one duplicates
    jaccard: np.ndarray  # estimated Jaccard of each row with its keeper (1 for kept rows)
    stats: dict


def near_duplicates(
    table: pa.Table,
    sig: np.ndarray,
    candidates: np.ndarray,
    config: DedupConfig,
) -> NearDuplicates:
    """Verify LSH candidates, cluster, and choose removals (see the module docstring).

    `sig` holds a signature per row of `table`; `candidates` are the rows that take part (rows
    with text).
    """
    n = table.num_rows
    bands, rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    left, right = candidate_pairs(sig, candidates, bands, rows)
    jac = estimated_jaccard(sig, left, right)
    verified = jac >= config.threshold
    left, right = left[verified], right[verified]
    keep = np.ones(n, dtype=bool)
    keeper = np.arange(n, dtype=np.int64)
    jaccard = np.ones(n, dtype=np.float32)
    open_rows = np.ones(n, dtype=bool)
    rounds = 0
    while True:
        active = open_rows[left] & open_rows[right]
        left, right = left[active], right[active]
        if left.size == 0:
            break
        rounds += 1
        chosen = choose_keepers(table, clusters_from_pairs(n, left, right), config.rule)
        members = np.zeros(n, dtype=bool)
        members[left] = members[right] = True
        others = np.flatnonzero(members & ~chosen.keep)
        sim = estimated_jaccard(sig, others, chosen.keeper[others])
        close = sim >= config.threshold
        removed = others[close]
        keep[removed] = False
        keeper[removed] = chosen.keeper[removed]
        jaccard[removed] = sim[close]
        open_rows[:] = False
        open_rows[others[~close]] = True  # chained members: cluster again among themselves
    stats = {
        "bands": bands,
        "rows_per_band": rows,
        "candidate_pairs": int(verified.size),
        "verified_pairs": int(verified.sum()),
        "cluster_rounds": rounds,
        "near_duplicates": int((~keep).sum()),
    }
    return NearDuplicates(Keepers(keep, keeper), jaccard, stats)


@dataclass
class Dedup:
    """The dedup operator (`table -> OpResult`).

    `on_signed(done, total)` is called after each batch of signatures (for a progress bar).
    """

    config: DedupConfig = field(default_factory=DedupConfig)
    on_signed: Callable[[int, int], None] | None = None

    def __call__(self, table: pa.Table) -> OpResult:
        start = time.perf_counter()
        config = self.config
        exact = exact_dedup(table, config.fields, config.rule)
        stats = {"rows": table.num_rows, "exact_duplicates": exact.stats["exact_duplicates"]}
        if not config.near:
            stats["seconds"] = round(time.perf_counter() - start, 3)
            return OpResult(exact.table, exact.removed, stats)
        survivors = exact.table
        texts = record_text(survivors, config.fields).to_arrow()
        signed = time.perf_counter()
        report = self.on_signed
        sig = signatures_parallel(
            texts,
            config.minhash,
            config.workers,
            config.batch_docs,
            (lambda k: report(k, len(texts))) if report else None,
        )
        stats["signature_seconds"] = round(time.perf_counter() - signed, 3)
        # An empty shingle set leaves every signature value at its maximum.
        has_text = (sig != np.uint32(0xFFFFFFFF)).any(axis=1)
        stats["without_text"] = int((~has_text).sum())
        near = near_duplicates(survivors, sig, np.flatnonzero(has_text), config)
        stats.update(near.stats)
        details = duplicate_details(survivors, near.keepers, near.jaccard)
        kept, removed = split_rows(survivors, near.keepers.keep, REASON, details)
        stats["seconds"] = round(time.perf_counter() - start, 3)
        return OpResult(kept, pa.concat_tables([exact.removed, removed]), stats)
