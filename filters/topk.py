"""Top-k inner-product search over normalised embeddings, exact and in blocks.

Every model-based step (consistency ranks, mined candidates, semantic duplicate pairs) needs
"the best corpus rows for each query". The exact path multiplies one block of queries by one
block of the corpus at a time and merges each block's top-k into a running top-k, so memory is
`queries_block x corpus_block` scores, never the full `queries x corpus` matrix: 200k x 200k
runs in a few hundred MB on a CPU, 1M x 1M on one GPU. The same blocks also count how many
corpus rows beat a threshold (a rank without sorting), which the consistency filter needs.

`exclude` masks given corpus rows per query (a query's own positive, the query text itself)
inside each block, so excluded rows never take a top-k slot and are never counted.

FAISS (`pip install 'kalmix[faiss]'`) gives an approximate HNSW index for corpora where even the
blocked exact scan is too slow; its results are close to, not equal to, the exact ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from corpus.console import progress as progress_bar
from corpus.errors import KalmixError

BACKENDS = ("exact", "faiss")


@dataclass
class TopK:
    """Best `k` corpus rows per query: scores descending; index -1 where fewer rows exist."""

    scores: np.ndarray  # float32 [n_queries, k]
    indices: np.ndarray  # int64 [n_queries, k]


@dataclass(frozen=True)
class Blocking:
    """Block shape of the scan: `query_rows x corpus_rows` scores live at once."""

    device: str
    query_rows: int
    corpus_rows: int


def blocking(
    n_queries: int, n_corpus: int, k: int = 1, device: str | None = None, budget_mb: int = 0
) -> Blocking:
    """Block sizes for a device: about 128 MiB of scores on a CPU, 1 GiB on a GPU by default."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    budget = (budget_mb or (1024 if gpu else 128)) << 18  # float32 elements
    query_rows = max(1, min(n_queries, 8192 if gpu else 1024))
    corpus_rows = max(1, min(n_corpus, max(k, budget // query_rows)))
    return Blocking(device, query_rows, corpus_rows)


@contextlib.contextmanager
def progress_callback(
    total: int, description: str, show: bool
) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar as a `progress(n)` callback for the scans below (None when hidden)."""
    if not show:
        yield None
        return
    with progress_bar(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _tensor(x: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    t = (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if isinstance(x, np.ndarray)
        else x
    )
    return t.to(device=device, dtype=torch.float32)


def _check(queries: np.ndarray | torch.Tensor, corpus: np.ndarray | torch.Tensor) -> None:
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise KalmixError(
            f"queries {tuple(queries.shape)} and corpus {tuple(corpus.shape)} must be 2-D with "
            "the same embedding size (were they embedded with the same model?)"
        )


def score_blocks(
    queries: np.ndarray | torch.Tensor,
    corpus: np.ndarray | torch.Tensor,
    block: Blocking,
    exclude: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """Yield (query_start, query_end, corpus_start, scores) over all blocks, queries outermost.

    `exclude[i]` lists corpus rows (-1 = none) whose score for query i is set to -inf.
    `progress(n)` is called after each query block with the number of queries it finished.
    """
    _check(queries, corpus)
    c = _tensor(corpus, block.device)
    ex = torch.from_numpy(np.asarray(exclude, dtype=np.int64)) if exclude is not None else None
    nq, nc = queries.shape[0], c.shape[0]
    with torch.inference_mode():
        for qs in range(0, nq, block.query_rows):
            qe = min(nq, qs + block.query_rows)
            q = _tensor(queries[qs:qe], block.device)
            ex_q = ex[qs:qe].to(block.device) if ex is not None else None
            for cs in range(0, nc, block.corpus_rows):
                ce = min(nc, cs + block.corpus_rows)
                scores = q @ c[cs:ce].T
                if ex_q is not None:
                    rel = ex_q - cs
                    hit = (rel >= 0) & (rel < ce - cs)
                    rows = torch.arange(qe - qs, device=block.device).unsqueeze(1).expand_as(rel)
                    scores[rows[hit], rel[hit]] = float("-inf")
                yield qs, qe, cs, scores
            if progress:
                progress(qe - qs)


def topk(
    queries: np.ndarray | torch.Tensor,
    corpus: np.ndarray | torch.Tensor,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    backend: str = "exact",
    device: str | None = None,
    budget_mb: int = 0,
    progress: Callable[[int], None] | None = None,
) -> TopK:
    """The `k` highest inner products of each query over the corpus (cosine for unit vectors)."""
    if k < 1:
        raise KalmixError(f"k must be at least 1, got {k}")
    if backend == "faiss":
        return faiss_topk(queries, corpus, k, exclude=exclude)
    if backend != "exact":
        raise KalmixError(f"unknown search backend {backend!r}; one of: {', '.join(BACKENDS)}")
    nq, nc = queries.shape[0], corpus.shape[0]
    k_eff = min(k, nc)
    block = blocking(nq, nc, k_eff, device, budget_mb)
    scores = np.full((nq, k), -np.inf, np.float32)
    indices = np.full((nq, k), -1, np.int64)
    best_s: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for qs, qe, cs, block_scores in score_blocks(queries, corpus, block, exclude, progress):
        s, i = torch.topk(block_scores, min(k_eff, block_scores.shape[1]), dim=1)
        i = i + cs
        if cs == 0:
            best_s, best_i = s, i
        else:
            merged_s = torch.cat([best_s, s], dim=1)
            merged_i = torch.cat([best_i, i], dim=1)
            best_s, pos = torch.topk(merged_s, k_eff, dim=1)
            best_i = torch.gather(merged_i, 1, pos)
        if cs + block_scores.shape[1] >= nc:  # last corpus block of this query block
            scores[qs:qe, :k_eff] = best_s.cpu().numpy()
            indices[qs:qe, :k_eff] = best_i.cpu().numpy()
    indices[~np.isfinite(scores)] = -1
    return TopK(scores, indices)


def count_above(
    queries: np.ndarray | torch.Tensor,
    corpus: np.ndarray | torch.Tensor,
    thresholds: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
    device: str | None = None,
    budget_mb: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """For each query, how many corpus rows score strictly above its threshold (int64 [n])."""
    nq = queries.shape[0]
    block = blocking(nq, corpus.shape[0], 1, device, budget_mb)
    thr = torch.from_numpy(np.asarray(thresholds, np.float32)).to(block.device)
    counts = torch.zeros(nq, dtype=torch.int64, device=block.device)
    for qs, qe, _, scores in score_blocks(queries, corpus, block, exclude, progress):
        counts[qs:qe] += (scores > thr[qs:qe, None]).sum(dim=1)
    return counts.cpu().numpy()


def faiss_topk(
    queries: np.ndarray | torch.Tensor,
    corpus: np.ndarray | torch.Tensor,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    neighbors: int = 32,
) -> TopK:
    """Approximate top-k with a FAISS HNSW inner-product index (for corpora past ~1M rows)."""
    try:
        import faiss
    except ImportError:
        raise KalmixError(
            "the faiss backend needs faiss: pip install 'kalmix[faiss]' (or faiss-cpu), "
            "or use the exact backend"
        ) from None
    _check(queries, corpus)
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    c = np.ascontiguousarray(np.asarray(corpus, dtype=np.float32))
    extra = 0 if exclude is None else np.asarray(exclude).shape[1]
    want = min(k + extra, c.shape[0])
    index = faiss.IndexHNSWFlat(c.shape[1], neighbors, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200
    index.add(c)
    index.hnsw.efSearch = max(128, 2 * want)
    scores, indices = index.search(q, want)
    if exclude is not None:
        ex = np.asarray(exclude, dtype=np.int64)
        drop = (indices[:, :, None] == ex[:, None, :]).any(axis=2) | (indices < 0)
        scores = np.where(drop, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores = np.take_along_axis(scores, order, axis=1)
        indices = np.take_along_axis(indices, order, axis=1)
    out_s = np.full((q.shape[0], k), -np.inf, np.float32)
    out_i = np.full((q.shape[0], k), -1, np.int64)
    width = min(k, scores.shape[1])
    out_s[:, :width] = scores[:, :width]
    out_i[:, :width] = indices[:, :width]
    out_i[~np.isfinite(out_s)] = -1
    return TopK(out_s, out_i)
