"""Ingest throughput: `kalmix ingest` on a 1M-row JSONL beside polars read_ndjson + write_parquet.

The baseline does the minimum (parse, write); kalmix also maps columns, computes content ids,
keeps unmapped columns in `meta`, streams in bounded batches, computes stats and commits
atomically. Each side runs in its own process so peak memory is its own.

The first baseline infers its schema from the first 100 lines, so a key that first appears
later is dropped without a word; kalmix infers from every line of each block so nothing is
lost. The fair baseline is the second row, polars doing the same (`infer_schema_length=None`).
Target: kalmix at most 1.5x that lossless baseline.

Run: .venv/bin/python -m benchmarks.ingest [ROWS]   (default 1000000)
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

from benchmarks.common import run_child, sizes, write_results
from corpus.sample import python_docs_records

ROWS = sizes(__doc__, rows=1_000_000).rows

BASELINE = """
import sys, polars as pl
pl.read_ndjson(sys.argv[1]).write_parquet(sys.argv[2])
"""

LOSSLESS = """
import sys, polars as pl
pl.read_ndjson(sys.argv[1], infer_schema_length=None).write_parquet(sys.argv[2])
"""

KALMIX = """
import sys
from catalog.db import Catalog
from catalog.workspace import Workspace
from kalmix.ingest import ingest
cat = Catalog.open(Workspace.init(sys.argv[2]))
print(ingest(cat, sys.argv[1], name="bench", category="python-docs-qa").rows)
"""


def make_input(path: Path, rows: int) -> None:
    rng = random.Random(0)
    docs = python_docs_records()
    with path.open("w") as f:
        for i in range(rows):
            d = docs[i % len(docs)]
            f.write(
                json.dumps(
                    {
                        "question": f"{d['question']} ({i})",
                        "answer": d["answer"][: rng.randint(80, 600)],
                        "module": d["module"],
                        "lang": "en",
                    }
                )
                + "\n"
            )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "input.jsonl"
        make_input(src, ROWS)
        size_mb = src.stat().st_size / 2**20
        base_s, base_mem, _ = run_child(BASELINE, str(src), str(Path(tmp) / "out.parquet"))
        full_s, full_mem, _ = run_child(LOSSLESS, str(src), str(Path(tmp) / "out2.parquet"))
        ours_s, ours_mem, out = run_child(KALMIX, str(src), str(Path(tmp) / "ws"))
        assert int(out.strip()) == ROWS
    ratio = ours_s / base_s
    table = (
        f"{ROWS:,} rows, {size_mb:.0f} MiB JSONL; each side in a fresh process (start-up included)\n\n"
        "| | seconds | rows/s | peak RSS MiB |\n|---|---|---|---|\n"
        f"| polars read_ndjson + write_parquet (baseline) | {base_s:.1f} | {ROWS / base_s:,.0f} | {base_mem:.0f} |\n"
        f"| polars, schema from every line (no key dropped) | {full_s:.1f} | {ROWS / full_s:,.0f} "
        f"| {full_mem:.0f} |\n"
        f"| kalmix ingest | {ours_s:.1f} | {ROWS / ours_s:,.0f} | {ours_mem:.0f} |\n\n"
        f"kalmix / lossless polars: {ours_s / full_s:.2f}x (target <= 1.5x); kalmix / lossy "
        f"baseline: {ratio:.2f}x; load average {os.getloadavg()[0]:.1f}"
    )
    write_results(
        "ingest",
        {
            "rows": ROWS,
            "input_mib": size_mb,
            "baseline_s": base_s,
            "kalmix_s": ours_s,
            "baseline_peak_mib": base_mem,
            "lossless_baseline_s": full_s,
            "lossless_baseline_peak_mib": full_mem,
            "kalmix_peak_mib": ours_mem,
            "ratio": ratio,
            "lossless_ratio": ours_s / full_s,
        },
        table,
    )


if __name__ == "__main__":
    main()
