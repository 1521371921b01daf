"""Semantic dedup search at scale: kalmix's routes beside a numpy full-similarity-matrix baseline.

The search part of `kalmix semdedup` (candidate pairs at cosine >= 0.85, then clusters and
keepers) on random unit vectors (384 dims, all-MiniLM-L6-v2's size) with planted duplicates:
10% of the rows are noisy copies of other rows (cosine 0.91-0.98 to their original), so the
true pairs are known at every size. Random vectors have no cluster structure, the hardest case
for the k-means route. Embedding is left out: its own benchmark is `benchmarks/embed.py`.

Each run is a fresh process (peak RSS is its own, the vectors included: 1.5 GB at 1M rows).
Up to 20k rows the baseline builds the full n x n similarity matrix (100k rows would need 40 GB
for the matrix alone), kalmix's exact route runs beside it, and the k-means route's recall of the
exact route's pairs is measured on all pairs. Past 20k the exact route over all rows would take
too long on 2 cores (n^2), so it runs for a random sample of rows (each sampled row against all
rows, the same blocked top-k): the k-means route's recall of those pairs estimates its recall of
the exact route's pairs, and the sample's time projects the full exact route's time.

Run: .venv/bin/python -m benchmarks.semdedup [ROWS ...]   (default 20000 100000 1000000).
Sizes run apart (e.g. `... 20000 100000`, then `... 1000000`) are merged into one results
file.
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.common import RESULTS, run_child, write_results

THRESHOLD = 0.85
_PARSER = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_PARSER.add_argument("rows", nargs="*", type=int, default=[20_000, 100_000, 1_000_000])
SIZES = _PARSER.parse_args().rows
BASELINE_MAX = 20_000
SAMPLE = 2_000  # rows searched exactly past BASELINE_MAX

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
from filters.semdedup import Pairs, SemDedupConfig, candidate_pairs, exact_pairs, pair_recall
from filters.semdedup import resolve_duplicates
from filters.topk import topk
route, compare, sample = sys.argv[3], sys.argv[4], int(sys.argv[5])
config = SemDedupConfig(threshold=thr, route=route)
table = pa.table({"id": [str(i) for i in range(n)]})
start = time.perf_counter()
pairs, _ = candidate_pairs(x, config)
cos = lambda a, b: np.einsum("ij,ij->i", x[a], x[b])
keepers, _, rounds = resolve_duplicates(table, pairs.left, pairs.right, cos, thr, KeeperRule())
seconds = time.perf_counter() - start
out = {"seconds": seconds, "pairs": len(pairs), "recall": recall(pairs.left, pairs.right),
       "removed": int((~keepers.keep).sum()), "probes": config.probes}
if compare == "all":
    out["recall_of_exact_route"] = pair_recall(pairs, exact_pairs(x, thr))
elif compare == "sample":
    rows = np.sort(np.random.default_rng(1).choice(n, sample, replace=False))
    t = time.perf_counter()
    hits = topk(x[rows], x, config.neighbors, exclude=rows[:, None])
    exact_seconds = time.perf_counter() - t
    reference = Pairs.from_hits(rows, hits.indices, hits.scores, thr)
    out["recall_of_exact_route"] = pair_recall(pairs, reference)
    out["exact_sample"] = {"rows": sample, "pairs": len(reference), "seconds": exact_seconds,
                           "projected_exact_route_s": exact_seconds * n / sample}
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


def previous_runs() -> list[dict]:
    """Runs of other sizes already in the results file (sizes may be run apart)."""
    path = RESULTS / "semdedup.json"
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text()).get("runs", []) if r["n"] not in SIZES]


def row(r: dict) -> str:
    exact = ""
    if "recall_of_exact_route" in r:
        exact = f"{r['recall_of_exact_route']:.3f}"
        if "exact_sample" in r:
            s = r["exact_sample"]
            exact += (
                f" (on {s['rows']:,} sampled rows' {s['pairs']:,} pairs; full exact route "
                f"projected {s['projected_exact_route_s'] / 60:,.0f} min)"
            )
    method = r["method"] + (f", {r['probes']} probes" if "probes" in r else "")
    return (
        f"| {r['n']:,} | {method} | {r['seconds']:,} | {r['rows_per_s']:,} | "
        f"{r['peak_mib']:,} | {r['recall']:.3f} | {exact} | {r['removed']:,} | "
        f"{r.get('load', 'not noted')} |"
    )


def main() -> None:
    runs = previous_runs()
    for n in SIZES:
        load = f"{os.getloadavg()[0]:.1f}"
        if n <= BASELINE_MAX:
            runs.append({"n": n, "method": "numpy full matrix (baseline)", **run(BASELINE, n)})
            runs[-1]["load"] = load
            runs.append(
                {"n": n, "method": "kalmix exact route", **run(KALMIX, n, "exact", "-", "0")}
            )
            runs[-1]["load"] = load
        compare = "all" if n <= BASELINE_MAX else "sample"
        kmeans = run(KALMIX, n, "kmeans", compare, str(min(n, SAMPLE)))
        runs.append({"n": n, "method": "kalmix k-means route", **kmeans, "load": load})
        print(runs[-1], flush=True)
    runs.sort(key=lambda r: (r["n"], r["method"] != "numpy full matrix (baseline)"))
    table = (
        f"Search + clustering of `kalmix semdedup` at cosine >= {THRESHOLD}: random unit vectors, "
        "384 dims, 10% planted near-copies (cosine 0.91-0.98); CPU, 2 cores **shared with other "
        "engineers' jobs** (load average at the start of each size in the last column: figures "
        "are slower than on an idle machine); each run in a fresh process (peak RSS includes the "
        "vectors: 1.5 GB at 1M rows)\n\n"
        "| rows | method | seconds | rows/s | peak RSS MiB | recall of planted pairs | "
        "recall of exact route's pairs | rows removed | load |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(row(r) for r in runs)
        + "\n\nThe baseline's matrix is n^2 x 4 bytes: 100k rows would need 40 GB, so it stops "
        "at 20k. `auto` picks the exact route up to 20k distinct texts on a CPU, k-means above. "
        "Past 20k the exact route runs only for a random sample of rows (each against all rows): "
        "the k-means route's recall of those rows' exact pairs, and the full exact route's time "
        "projected from the sample's."
    )
    write_results("semdedup", {"threshold": THRESHOLD, "sample_rows": SAMPLE, "runs": runs}, table)


if __name__ == "__main__":
    main()
