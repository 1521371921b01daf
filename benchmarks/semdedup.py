"""Semantic dedup search at scale: kalmix's routes beside a numpy full-similarity-matrix baseline.

The search part of `kalmix semdedup` (candidate pairs at cosine >= 0.85, then clusters and
keepers) on random unit vectors (384 dims, all-MiniLM-L6-v2's size) with planted duplicates:
10% of the rows are noisy copies of other rows (cosine 0.91-0.98 to their original), so the
true pairs are known and recall can be measured at every size. Embedding is left out: its own
benchmark is `benchmarks/embed.py`, and a re-run is served from the cache.

Each run is a fresh process (peak RSS is its own, inputs included). The baseline builds the full
n x n similarity matrix and takes every pair above the threshold; it runs where that fits in
memory (100k rows would need 40 GB for the matrix alone). kalmix runs its exact blocked route
where the baseline runs, and the k-means route (SemDeDup) at every size up to 1M rows.

Usage: python benchmarks/semdedup.py [MAX_ROWS] (default 1000000)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import run_child, write_results  # noqa: E402

THRESHOLD = 0.85
MAX_ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
BASELINE_SIZES = (10_000, 20_000)
KMEANS_SIZES = (10_000, 20_000, 100_000, 1_000_000)

DATA = """
import json, sys, time
import numpy as np
n, thr = int(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.standard_normal((n, 384), dtype=np.float32)
def normalise():
    for s in range(0, n, 65536):  # in slices: no full-size temporary
        x[s : s + 65536] /= np.linalg.norm(x[s : s + 65536], axis=1, keepdims=True)
normalise()
base = int(n * 0.9)
src = rng.integers(0, base, n - base)
noise = rng.uniform(0.2, 0.4, (n - base, 1)).astype(np.float32)
x[base:] = x[src] + noise * rng.standard_normal((n - base, 384), dtype=np.float32) / np.sqrt(384)
normalise()
truth = set(zip(np.minimum(src, np.arange(base, n)).tolist(), np.maximum(src, np.arange(base, n)).tolist()))
def recall(left, right):
    return len(truth & set(zip(left.tolist(), right.tolist()))) / len(truth)
"""

BASELINE = (
    DATA
    + """
from filters.clusters import clusters_from_pairs
start = time.perf_counter()
sim = x @ x.T
left, right = np.nonzero(np.triu(sim >= thr, 1))
clusters = clusters_from_pairs(n, left, right)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "pairs": int(left.size), "recall": recall(left, right),
                  "removed": int(n - np.unique(clusters).size)}))
"""
)

KALMIX = (
    DATA
    + """
import pyarrow as pa
from filters.clusters import KeeperRule
from filters.semdedup import SemDedupConfig, candidate_pairs, exact_pairs, pair_recall, resolve_duplicates
route = sys.argv[3]
table = pa.table({"id": [str(i) for i in range(n)]})
start = time.perf_counter()
pairs, _ = candidate_pairs(x, SemDedupConfig(threshold=thr, route=route))
cos = lambda a, b: np.einsum("ij,ij->i", x[a], x[b])
keepers, _, rounds = resolve_duplicates(table, pairs.left, pairs.right, cos, thr, KeeperRule())
seconds = time.perf_counter() - start
out = {"seconds": seconds, "pairs": len(pairs), "recall": recall(pairs.left, pairs.right),
       "removed": int((~keepers.keep).sum())}
if route == "kmeans" and sys.argv[4] == "compare":
    out["recall_of_exact_route"] = pair_recall(pairs, exact_pairs(x, thr))
print(json.dumps(out))
"""
)


def run(code: str, n: int, *args: str) -> dict:
    _, peak, out = run_child(code, str(n), str(THRESHOLD), *args)
    result = json.loads(out)
    result["peak_mib"] = round(peak)
    result["rows_per_s"] = round(n / result["seconds"])
    result["seconds"] = round(result["seconds"], 2)
    return result


def main() -> None:
    runs = []
    for n in KMEANS_SIZES:
        if n > MAX_ROWS:
            continue
        if n in BASELINE_SIZES:
            runs.append({"n": n, "method": "numpy full matrix (baseline)", **run(BASELINE, n)})
            runs.append({"n": n, "method": "kalmix exact route", **run(KALMIX, n, "exact", "-")})
        compare = "compare" if n in BASELINE_SIZES else "-"
        runs.append({"n": n, "method": "kalmix k-means route", **run(KALMIX, n, "kmeans", compare)})
        print(runs[-1], flush=True)
    lines = [
        f"| {r['n']:,} | {r['method']} | {r['seconds']:,} | {r['rows_per_s']:,} | "
        f"{r['peak_mib']:,} | {r['recall']:.3f} | "
        + (f"{r['recall_of_exact_route']:.3f}" if "recall_of_exact_route" in r else "")
        + f" | {r['removed']:,} |"
        for r in runs
    ]
    table = (
        f"Search + clustering of `kalmix semdedup` at cosine >= {THRESHOLD}: random unit vectors, "
        "384 dims, 10% planted near-copies (cosine 0.91-0.98); CPU, 2 cores; each run in a "
        "fresh process (peak RSS includes the vectors: 1.5 GB at 1M rows)\n\n"
        "| rows | method | seconds | rows/s | peak RSS MiB | recall of planted pairs | "
        "recall of exact route's pairs | rows removed |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(lines)
        + "\n\nThe baseline's matrix is n^2 x 4 bytes: 100k rows would need 40 GB, so it stops "
        "at 20k. `auto` picks the exact route up to 20k distinct texts on a CPU, k-means above."
    )
    write_results("semdedup", {"threshold": THRESHOLD, "runs": runs}, table)


if __name__ == "__main__":
    main()
