"""Semantic dedup (SemDeDup, arXiv 2303.09540): remove paraphrased duplicates by embedding cosine.

MinHash catches copies with a few words edited; paraphrases (the same question reworded across
sources, synthetic queries converging on one phrasing) need embeddings. One text field is
embedded with the shared embedder (cache reused), pairs of rows with cosine >= `threshold` are
found, joined into clusters by union-find, and one keeper per cluster survives by the same rule
as every other dedup (`filters.clusters`). As in MinHash dedup, a row is removed only if its own
cosine to the keeper reaches the threshold: members linked only through a chain (A~B, B~C, A far
from C) are clustered again among themselves (`resolve_duplicates`). Removals record `dup_of`
(the keeper's id, and its dataset under `--across`) and the cosine to the keeper.

Finding the pairs, two routes, chosen by the number of distinct texts (`route="auto"`):

- `exact`: blocked exact top-k of every text against all texts (`filters.topk`), keeping up to
  `neighbors` neighbours per text at or above the threshold. Cost n^2: the default limit is 20k
  distinct texts on a CPU (a few seconds) and 500k on a GPU.
- `kmeans`: SemDeDup's route. Spherical k-means (seeded, fitted on a sample, sqrt(n) clusters),
  then the same top-k search inside each cluster: each text is searched against the texts
  assigned to its nearest centroid, where a text is assigned to its `probes` nearest centroids
  so pairs straddling a cluster border are still seen. Cost about probes x n^1.5. Its recall of
  the exact route's pairs is measured in the tests and the benchmark (>= 0.95). Five probes: on
  random unit vectors with planted near-copies (the hardest case: no cluster structure) at 100k
  rows, 3 probes find 95.9% of the pairs, 5 find 98.8%, 8 find 99.8%, for +14% and +24% CPU time.

Union-find makes the neighbour cap harmless for clustering: a group of many near-copies is still
connected through each member's nearest neighbours. Identical texts are embedded once and joined
directly (cosine 1.0). Rows whose field is empty are never duplicates. Deterministic for a seed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from corpus.errors import KalmixError
from corpus.operator import DATASET_COLUMN, Operator, OpResult, split_rows
from filters.clusters import KeeperRule, duplicate_details, resolve_duplicates
from filters.embedder import Embedder
from filters.topk import progress_callback, topk

ROUTES = ("auto", "exact", "kmeans")
# Chosen on STS-B en dev with all-MiniLM-L6-v2 (tests/filters/test_semdedup.py prints the curve):
# at 0.85, 86% of gold-5.0 pairs (same meaning) end with one keeper and no pair with gold <= 1.0
# does; at 0.80, a third of the gold 3-4 pairs (partly different meaning) would merge too, and at
# 0.90 a quarter of the same-meaning pairs are missed.
DEFAULT_THRESHOLD = 0.85
# The threshold is model-specific: a static model (a mean of token vectors) scores pairs that
# share words higher than MiniLM does. minilm-static's was chosen the same way, on the same data
# (benchmarks/static_embed.py prints both curves): the lowest threshold at which no unrelated
# pair and no more partly-different pairs (gold 3-4) merge than with MiniLM at 0.85 (19%). At
# 0.88: 66% of same-meaning pairs merge, 16% of partly different, no unrelated; at 0.85 a quarter
# of the partly different would merge.
MODEL_THRESHOLDS = {"minilm-static": 0.88}
EXACT_MAX_ROWS = {"cpu": 20_000, "cuda": 500_000}
KMEANS_ITERS = 10
KMEANS_SAMPLE_PER_CLUSTER = 64  # k-means is fitted on at most this many texts per cluster


def default_threshold(model: str | None) -> float:
    """The default cosine threshold for an embedder's `name`: measured per built-in model, else
    MiniLM's 0.85 (re-check it for another model)."""
    return MODEL_THRESHOLDS.get(model or "", DEFAULT_THRESHOLD)


@dataclass(frozen=True)
class SemDedupConfig:
    field: str = "query"
    # Fields that must repeat too: a row is a duplicate only when every one of these also
    # reaches the threshold against the keeper. For pair data, `field="positive",
    # also=("query",)` keeps several queries of one passage (WordNet's lemmas sharing a gloss,
    # man pages sharing a DESCRIPTION), which are distinct training pairs, not copies.
    also: tuple[str, ...] = ()
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    route: str = "auto"
    exact_max_rows: int = 0  # 0: EXACT_MAX_ROWS for the device
    neighbors: int = 32  # pairs kept per text (union-find joins bigger groups through chains)
    clusters: int = 0  # 0: ceil(sqrt(distinct texts))
    probes: int = 5  # centroids each text is assigned to in the k-means route
    keeper: KeeperRule = KeeperRule()

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise KalmixError(f"--threshold must be in (0, 1], got {self.threshold}")
        if self.route not in ROUTES:
            raise KalmixError(f"--route must be one of {', '.join(ROUTES)}, got {self.route!r}")
        if self.neighbors < 1 or self.probes < 1:
            raise KalmixError("neighbors and probes must be at least 1")
        if self.field in self.also:
            raise KalmixError(f"--also {self.field!r} repeats --field")


@dataclass
class Pairs:
    """Undirected pairs (left < right) of row indices with their cosine."""

    left: np.ndarray
    right: np.ndarray
    cosine: np.ndarray

    @classmethod
    def from_hits(
        cls, rows: np.ndarray, hit_rows: np.ndarray, scores: np.ndarray, threshold: float
    ) -> Pairs:
        """Pairs from top-k hits (`hit_rows` -1 = none), above the threshold, deduplicated."""
        mask = (hit_rows >= 0) & (scores >= threshold)
        a = np.broadcast_to(rows[:, None], hit_rows.shape)[mask]
        b = hit_rows[mask]
        return cls(np.minimum(a, b), np.maximum(a, b), scores[mask]).unique()

    @classmethod
    def concat(cls, parts: list[Pairs]) -> Pairs:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        return cls(
            np.concatenate([p.left for p in parts]),
            np.concatenate([p.right for p in parts]),
            np.concatenate([p.cosine for p in parts]),
        ).unique()

    def unique(self) -> Pairs:
        key = self.left.astype(np.int64) << 32 | self.right.astype(np.int64)
        _, first = np.unique(key, return_index=True)
        return Pairs(self.left[first], self.right[first], self.cosine[first].astype(np.float32))

    def keys(self) -> set[tuple[int, int]]:
        return set(zip(self.left.tolist(), self.right.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self.left)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def exact_pairs(
    x: np.ndarray, threshold: float, neighbors: int = 32, progress=None, device: str | None = None
) -> Pairs:
    """All-against-all blocked top-k: up to `neighbors` pairs per row at or above threshold."""
    n = len(x)
    if n < 2:
        return Pairs.concat([])
    rows = np.arange(n, dtype=np.int64)
    hits = topk(x, x, neighbors, exclude=rows[:, None], progress=progress, device=device)
    return Pairs.from_hits(rows, hits.indices, hits.scores, threshold)


def kmeans(
    x: np.ndarray, clusters: int, seed: int, iters: int = KMEANS_ITERS, device: str | None = None
) -> np.ndarray:
    """Spherical k-means centroids (unit rows), seeded; fitted on a sample of the rows."""
    rng = np.random.default_rng(seed)
    n = len(x)
    clusters = max(1, min(clusters, n))
    fit_rows = min(n, clusters * KMEANS_SAMPLE_PER_CLUSTER)
    sample = np.sort(rng.choice(n, fit_rows, replace=False)) if fit_rows < n else np.arange(n)
    fit = torch.from_numpy(np.ascontiguousarray(x[sample], np.float32))
    centroids = fit[torch.from_numpy(rng.choice(fit_rows, clusters, replace=False))].clone()
    for _ in range(iters):
        assign = torch.from_numpy(topk(fit, centroids, 1, device=device).indices[:, 0])
        sums = torch.zeros_like(centroids).index_add_(0, assign, fit)
        counts = torch.bincount(assign, minlength=clusters)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # re-seed empty clusters on random texts
            sums[empty] = fit[torch.from_numpy(rng.choice(fit_rows, len(empty), replace=False))]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids.numpy()


def kmeans_pairs(
    x: np.ndarray,
    threshold: float,
    neighbors: int = 32,
    clusters: int = 0,
    probes: int = 5,
    seed: int = 0,
    progress=None,
    device: str | None = None,
) -> Pairs:
    """SemDeDup's route: k-means, then top-k of each text among its nearest cluster's members."""
    n = len(x)
    if n < 2:
        return Pairs.concat([])
    clusters = clusters or math.ceil(math.sqrt(n))
    centroids = kmeans(x, clusters, seed, device=device)
    near = topk(x, centroids, min(probes, len(centroids)), device=device).indices
    primary = near[:, 0]
    members_of = _group(near.ravel(), np.repeat(np.arange(n), near.shape[1]), len(centroids))
    queries_of = _group(primary, np.arange(n), len(centroids))
    parts = []
    for c in range(len(centroids)):
        queries, members = queries_of[c], members_of[c]
        if len(queries) == 0 or len(members) < 2:
            continue
        # exclude each query's own position among the members (members are sorted row indices)
        self_pos = np.searchsorted(members, queries)[:, None]
        hits = topk(x[queries], x[members], neighbors, exclude=self_pos, device=device)
        found = np.where(hits.indices >= 0, members[np.maximum(hits.indices, 0)], -1)
        parts.append(Pairs.from_hits(queries, found, hits.scores, threshold))
        if progress:
            progress(len(queries))
    return Pairs.concat(parts)


def _group(keys: np.ndarray, values: np.ndarray, groups: int) -> list[np.ndarray]:
    """values grouped by key (0..groups-1), each group sorted ascending."""
    order = np.lexsort((values, keys))
    bounds = np.searchsorted(keys[order], np.arange(groups + 1))
    sorted_values = values[order]
    return [sorted_values[bounds[g] : bounds[g + 1]] for g in range(groups)]


def candidate_pairs(
    x: np.ndarray, config: SemDedupConfig, show_progress: bool = False, device: str | None = None
) -> tuple[Pairs, str]:
    """Pairs of rows of `x` at or above the threshold, and the route that found them."""
    device = device or _device()
    route = config.route
    if route == "auto":
        limit = (
            config.exact_max_rows or EXACT_MAX_ROWS["cuda" if device.startswith("cuda") else "cpu"]
        )
        route = "exact" if len(x) <= limit else "kmeans"
    with progress_callback(len(x), f"semantic pairs ({route})", show_progress) as tick:
        if route == "exact":
            return exact_pairs(x, config.threshold, config.neighbors, tick, device), route
        pairs = kmeans_pairs(
            x,
            config.threshold,
            config.neighbors,
            config.clusters,
            config.probes,
            config.seed,
            tick,
            device,
        )
        return pairs, route


def pair_recall(found: Pairs, reference: Pairs) -> float:
    """Share of the reference pairs that `found` also has (1.0 when the reference is empty)."""
    if len(reference) == 0:
        return 1.0
    return len(found.keys() & reference.keys()) / len(reference)


@dataclass
class SemanticDedup(Operator):
    """Operator: remove rows whose `field` (and every `also` field) embeds within `threshold`
    cosine of a kept row."""

    embedder: Embedder
    config: SemDedupConfig = field(default_factory=SemDedupConfig)
    show_progress: bool = False

    def params(self) -> dict:
        c = self.config
        return {
            "field": c.field,
            **({"also": list(c.also)} if c.also else {}),  # absent: earlier versions' params
            "threshold": c.threshold,
            "seed": c.seed,
            "route": c.route,
            "prefer": c.keeper.prefer,
            "priority": list(c.keeper.priority),
            **self.embedder.params(),
        }

    def _embed_field(self, table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Each row's index into the field's distinct non-empty texts (-1: empty), and their
        unit vectors (identical texts are embedded once)."""
        if name not in table.column_names:
            raise KalmixError(
                f"field {name!r} does not exist; text fields: "
                + ", ".join(
                    n for n in table.column_names if pa.types.is_string(table.schema.field(n).type)
                )
            )
        if not pa.types.is_string(table.schema.field(name).type):
            raise KalmixError(f"field {name!r} is not a text field")
        texts = [t.strip() if t else "" for t in table.column(name).to_pylist()]
        index: dict[str, int] = {}
        text_of = np.array([index.setdefault(t, len(index)) if t else -1 for t in texts], np.int64)
        return text_of, self.embedder.encode(list(index)) if index else np.zeros((0, 1))

    def __call__(self, table: pa.Table) -> OpResult:
        cfg = self.config
        text_of, vectors = self._embed_field(table, cfg.field)
        if not len(vectors):
            raise KalmixError(f"field {cfg.field!r} is empty in every row: nothing to compare")
        others = [self._embed_field(table, name) for name in cfg.also]
        text_pairs, route = candidate_pairs(vectors, cfg, self.show_progress)

        rows = np.flatnonzero(text_of >= 0)
        first_row = np.empty(len(vectors), np.int64)  # smallest row index of each text
        _, first = np.unique(text_of[rows], return_index=True)
        first_row[text_of[rows[first]]] = rows[first]
        copies = rows[first_row[text_of[rows]] != rows]
        left = np.concatenate([first_row[text_pairs.left], first_row[text_of[copies]]])
        right = np.concatenate([first_row[text_pairs.right], copies])

        def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            """The lowest cosine over the fields (two empty texts count as equal)."""
            out = np.einsum("ij,ij->i", vectors[text_of[a]], vectors[text_of[b]])
            for of, vec in others:
                ta, tb = of[a], of[b]
                both = (ta >= 0) & (tb >= 0)
                sim = np.where((ta < 0) & (tb < 0), 1.0, 0.0).astype(np.float32)
                sim[both] = np.einsum("ij,ij->i", vec[ta[both]], vec[tb[both]])
                out = np.minimum(out, sim)
            return out

        if others and len(left):  # pairs whose other fields differ are not duplicates
            same = cosine(left, right) >= cfg.threshold
            left, right = left[same], right[same]
        keepers, similarity, rounds = resolve_duplicates(
            table, left, right, cosine, cfg.threshold, cfg.keeper
        )
        details = duplicate_details(table, keepers, similarity, key="cosine")
        kept, removed = split_rows(table, keepers.keep, "semantic_duplicate", details)
        stats = {
            "field": cfg.field,
            **({"also": list(cfg.also)} if cfg.also else {}),
            "threshold": cfg.threshold,
            "route": route,
            "model": self.embedder.name,
            "distinct_texts": len(vectors),
            "embedded": self.embedder.embedded,
            "pairs": len(text_pairs),
            "cluster_rounds": rounds,
            "keepers_with_duplicates": int(len(np.unique(keepers.keeper[~keepers.keep]))),
            "removed": int((~keepers.keep).sum()),
        }
        if DATASET_COLUMN in removed.column_names:
            stats["removed_by_dataset"] = dict(Counter(removed.column(DATASET_COLUMN).to_pylist()))
        return OpResult(kept, removed, stats)
