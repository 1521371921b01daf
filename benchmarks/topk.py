"""Top-k search: `filters.topk.topk` (blocked, exact) beside numpy's full score matrix + argsort.

Random unit vectors (384 dims, the size of all-MiniLM-L6-v2), k = 100 (mining's default window
end). Each run is a fresh process so its peak RSS is its own (inputs included). The baseline
materialises the whole `queries x corpus` matrix and argsorts it, as a notebook would; it runs
at sizes where that still fits. Then the blocked path alone at sizes the baseline cannot hold:
a slice of queries against a 200k and a 1M corpus, with queries/s and the projected time for
all queries (the work is linear in the queries).

Run: .venv/bin/python -m benchmarks.topk
"""

from __future__ import annotations

from benchmarks.common import run_child, write_results

K = 100
DIM = 384
SHARED_SIZES = (4_000, 8_000, 16_000)  # queries = corpus = n
LARGE = ((200_000, 2_000), (1_000_000, 500))  # (corpus, queries measured)

SETUP = """
import sys, time, numpy as np
nq, nc, k, d = (int(a) for a in sys.argv[1:5])
rng = np.random.default_rng(0)
c = rng.standard_normal((nc, d), dtype=np.float32)
for s in range(0, nc, 65536):  # in slices: no full-size temporary
    c[s : s + 65536] /= np.linalg.norm(c[s : s + 65536], axis=1, keepdims=True)
q = c[:nq].copy()
"""

BASELINE = (
    SETUP
    + """
start = time.perf_counter()
scores = q @ c.T
idx = np.argsort(-scores, axis=1)[:, :k]
print(time.perf_counter() - start, idx[0, 0])
"""
)

KALMIX = (
    SETUP
    + """
from filters.topk import topk
start = time.perf_counter()
hits = topk(q, c, k)
print(time.perf_counter() - start, hits.indices[0, 0])
"""
)


def run(code: str, nq: int, nc: int) -> tuple[float, float]:
    """(seconds of the search itself, peak RSS MiB of the process)."""
    _, peak, out = run_child(code, str(nq), str(nc), str(K), str(DIM))
    seconds, first = out.split()
    assert int(first) == 0  # a query's best match is itself
    return float(seconds), peak


def main() -> None:
    rows, data = [], {"k": K, "dim": DIM, "same_size": [], "large": []}
    for n in SHARED_SIZES:
        b_s, b_mem = run(BASELINE, n, n)
        k_s, k_mem = run(KALMIX, n, n)
        data["same_size"].append(
            {
                "n": n,
                "baseline_s": round(b_s, 2),
                "baseline_peak_mib": round(b_mem),
                "kalmix_s": round(k_s, 2),
                "kalmix_peak_mib": round(k_mem),
            }
        )
        rows.append(
            f"| {n:,} x {n:,} | {n / b_s:,.0f} q/s, {b_mem:,.0f} MiB | "
            f"{n / k_s:,.0f} q/s, {k_mem:,.0f} MiB | {b_s / k_s:.1f}x |"
        )
    large_rows = []
    for nc, nq in LARGE:
        k_s, k_mem = run(KALMIX, nq, nc)
        data["large"].append(
            {
                "corpus": nc,
                "queries": nq,
                "kalmix_s": round(k_s, 2),
                "kalmix_peak_mib": round(k_mem),
                "projected_all_queries_s": round(k_s * nc / nq),
            }
        )
        full_gb = nc * nc * 4 / 1e9
        large_rows.append(
            f"| {nq:,} queries x {nc:,} | {nq / k_s:,.0f} q/s | {k_mem:,.0f} MiB "
            f"(corpus alone {nc * DIM * 4 / 2**20:,.0f} MiB) | {k_s * nc / nq / 60:,.0f} min | "
            f"{full_gb:,.0f} GB |"
        )
    table = (
        f"Random unit vectors, {DIM} dims, k = {K}, CPU; each run in a fresh process "
        "(peak RSS includes the inputs)\n\n"
        "| queries x corpus | numpy full matrix + argsort (baseline) | kalmix topk (blocked) | "
        "speed-up |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nPast the baseline's reach (kalmix only; the baseline's score matrix alone would "
        "need the last column):\n\n"
        "| search | kalmix | peak RSS | projected, all corpus rows as queries | full matrix |\n"
        "|---|---|---|---|---|\n" + "\n".join(large_rows)
    )
    write_results("topk", data, table)


if __name__ == "__main__":
    main()
