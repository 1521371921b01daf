"""Mixture resolve + sample: `create_mixture` over 200 datasets / 10M rows beside a polars baseline.

Setup (not timed): 200 synthetic datasets whose sizes are log-uniform (about 5k to 200k rows,
10M in all), registered through `catalog.versions` like any ingest. Then, each in a fresh
process so its peak memory is its own:

- baseline: polars reads every id of the same pinned files into one frame (with a dataset
  column) and calls `DataFrame.sample` per dataset with the manifest's row counts, then writes
  the sampled ids. It is given the counts, so it does no selection or allocation, and it keeps
  ids only (no file/row positions, which duplicate ids make necessary).
- kalmix: `create_mixture` with a WHERE over the datasets view, temperature weighting (tau 2),
  a 2M-row budget and a cap: selection, allocation, sampling, positions + ids Parquet, commit.
  `plan_mixture` (the dashboard's live preview) is timed inside the same process.

Then the trainer's read path: `iter_dataset_tables` streaming the sampled records (query,
positive) of the mixture, beside polars reading those columns of every pinned file and
gathering the sampled rows (the whole selection in memory at once).

Run: .venv/bin/python -m benchmarks.mixture [DATASETS] [ROWS]   (default 200 10000000)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import run_child, sizes, write_results

_SIZES = sizes(__doc__, datasets=200, rows=10_000_000)
DATASETS, TOTAL_ROWS = _SIZES.datasets, _SIZES.rows
BUDGET = TOTAL_ROWS // 5
LANGUAGES = ("en", "zh", "de", "fr")
SPEC = {
    "where": "task_type = 'retrieval' AND rows > 0",
    "weighting": "temperature",
    "tau": 2.0,
    "budget": BUDGET,
    "cap": 2 * BUDGET // DATASETS,
    "seed": 13,
}

KALMIX = """
import json, sys, time
from catalog.db import Catalog
from catalog.workspace import Workspace
from catalog.mixtures import MixtureSpec, create_mixture, plan_mixture
cat = Catalog.open(Workspace.load(sys.argv[1]))
spec = MixtureSpec.from_dict(json.loads(sys.argv[2]))
t = time.perf_counter()
plan_mixture(cat, spec)
plan_s = time.perf_counter() - t
t = time.perf_counter()
mv = create_mixture(cat, "bench", spec)
create_s = time.perf_counter() - t
import pyarrow as pa
print(json.dumps({"rows": mv.rows, "plan_s": plan_s, "create_s": create_s,
                  "arrow_peak_mib": pa.default_memory_pool().max_memory() / 2**20,
                  "taken": {e.dataset: e.rows_taken for e in mv.entries},
                  "ids_path": str(mv.ids_path)}))
"""

READ = """
import json, sys, time
from catalog.db import Catalog
from catalog.workspace import Workspace
from catalog.mixtures import iter_dataset_tables
cat = Catalog.open(Workspace.load(sys.argv[1]))
t = time.perf_counter()
rows = 0
for _, table in iter_dataset_tables(cat, "bench@v1", columns=["query", "positive"]):
    rows += table.num_rows
import pyarrow as pa
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t,
                  "arrow_peak_mib": pa.default_memory_pool().max_memory() / 2**20}))
"""

READ_BASELINE = """
import json, sys, time
import polars as pl
job = json.loads(open(sys.argv[1]).read())
t = time.perf_counter()
rows = 0
positions = pl.read_parquet(sys.argv[2])
for d in job["datasets"]:
    records = pl.scan_parquet(d["files"]).select("query", "positive").collect()
    pos = positions.filter(pl.col("dataset") == d["name"])
    offsets = [0]
    for f in d["files"]:
        offsets.append(offsets[-1] + pl.scan_parquet(f).select(pl.len()).collect().item())
    index = pos.select(pl.col("row") + pl.col("file").replace_strict(
        list(range(len(d["files"]))), offsets[:-1], return_dtype=pl.Int64))
    rows += records[index.to_series()].height
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t}))
"""

BASELINE = """
import json, sys, time
import polars as pl
job = json.loads(open(sys.argv[1]).read())
t = time.perf_counter()
frames = [pl.scan_parquet(d["files"]).select("id").with_columns(dataset=pl.lit(d["name"]))
          for d in job["datasets"]]
ids = pl.concat(frames).collect()
parts, start = [], 0
for d in job["datasets"]:
    part = ids.slice(start, d["rows"])
    start += d["rows"]
    if d["taken"]:
        parts.append(part.sample(n=d["taken"], seed=13))
out = pl.concat(parts)
out.write_parquet(sys.argv[2])
print(json.dumps({"rows": out.height, "seconds": time.perf_counter() - t}))
"""


def make_workspace(root: Path) -> dict:
    """Register the synthetic datasets; returns their sizes and files."""
    import numpy as np
    import polars as pl

    from catalog import versions
    from catalog.db import Catalog
    from catalog.versions import Commit, DatasetInfo
    from catalog.workspace import Workspace
    from corpus.schema import RECORD_SCHEMA
    from corpus.writer import write_table

    cat = Catalog.open(Workspace.init(root))
    rng = np.random.default_rng(0)
    sizes = np.exp(rng.uniform(np.log(5_000), np.log(200_000), DATASETS))
    sizes = np.floor(sizes / sizes.sum() * TOTAL_ROWS).astype(int)
    sizes[0] += TOTAL_ROWS - sizes.sum()
    out = []
    for i, n in enumerate(sizes.tolist()):
        name = f"ds{i:03d}"
        frame = pl.DataFrame({"i": pl.int_range(n, eager=True)}).select(
            id=pl.concat_str(pl.lit(name), pl.col("i").hash(i).cast(pl.String)),
            task_type=pl.lit("retrieval"),
            category=pl.lit("faq-retrieval"),
            instruction=pl.lit(None, pl.String),
            query=pl.format("question {} of {}", pl.col("i"), pl.lit(name)),
            positive=pl.format(
                "an answer passage for question {} in dataset {}", "i", pl.lit(name)
            ),
            negatives=pl.lit([], pl.List(pl.String)),
            score=pl.lit(None, pl.Float64),
            label=pl.lit(None, pl.String),
            language=pl.lit(LANGUAGES[i % len(LANGUAGES)]),
            source=pl.lit("bench"),
            meta=pl.lit("{}"),
        )
        with versions.staging(cat, name) as staged:
            files = write_table(staged.path, frame.to_arrow().cast(RECORD_SCHEMA), 150_000)
            info = DatasetInfo(name, "faq-retrieval", "retrieval")
            [ref] = versions.commit(cat, Commit(name, staged, "ingest", {}, info=info))
        final = cat.workspace.data_dir / name / f"v{ref.version}"
        out.append({"name": name, "rows": n, "files": [str(final / f.name) for f in files]})
    return {"datasets": out}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        t = time.perf_counter()
        job = make_workspace(root)
        setup_s = time.perf_counter() - t
        ours_s, ours_mem, out = run_child(KALMIX, str(root), json.dumps(SPEC))
        ours = json.loads(out)
        for d in job["datasets"]:
            d["taken"] = ours["taken"].get(d["name"], 0)
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        base_s, base_mem, out = run_child(BASELINE, str(job_path), str(Path(tmp) / "ids.parquet"))
        base = json.loads(out)
        assert base["rows"] == ours["rows"] == BUDGET, (base["rows"], ours["rows"])
        read_s, read_mem, out = run_child(READ, str(root))
        read = json.loads(out)
        rbase_s, rbase_mem, out = run_child(READ_BASELINE, str(job_path), ours["ids_path"])
        rbase = json.loads(out)
        assert read["rows"] == rbase["rows"] == BUDGET, (read["rows"], rbase["rows"])
    table = (
        f"{DATASETS} datasets, {TOTAL_ROWS:,} rows; mixture: temperature tau 2, budget "
        f"{BUDGET:,}, cap {SPEC['cap']:,}; each side in a fresh process (start-up in the "
        f"process time, not in the work time); setup {setup_s:.0f}s untimed\n\n"
        "| | work seconds | process seconds | peak RSS MiB |\n|---|---|---|---|\n"
        f"| polars read all ids + `sample` per dataset (baseline) | {base['seconds']:.2f} | "
        f"{base_s:.2f} | {base_mem:.0f} |\n"
        f"| kalmix `create_mixture` (select, allocate, sample, write positions, commit) | "
        f"{ours['create_s']:.2f} | {ours_s:.2f} | {ours_mem:.0f} |\n"
        f"| kalmix `plan_mixture` alone (preview, no data read) | {ours['plan_s']:.3f} | | |\n\n"
        f"create: kalmix / baseline work time {ours['create_s'] / base['seconds']:.2f}x, "
        f"peak memory {ours_mem / base_mem:.2f}x\n\n"
        f"Reading the {BUDGET:,} sampled records (query, positive) back:\n\n"
        "| | work seconds | rows/s | peak RSS MiB |\n|---|---|---|---|\n"
        f"| polars read every pinned file + gather sampled rows (baseline) | "
        f"{rbase['seconds']:.2f} | {BUDGET / rbase['seconds']:,.0f} | {rbase_mem:.0f} |\n"
        f"| kalmix `iter_dataset_tables` (streamed, 8192-row tables) | {read['seconds']:.2f} | "
        f"{BUDGET / read['seconds']:,.0f} | {read_mem:.0f} |\n\n"
        f"Arrow memory pool peak (data actually held) in kalmix: create "
        f"{ours['arrow_peak_mib']:.0f} MiB, read {read['arrow_peak_mib']:.0f} MiB; the rest of "
        "the RSS is imports (DuckDB, pyarrow, numpy) and allocator caching.\n\n"
        f"Load average of this shared machine when the run ended: {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores."
    )
    write_results(
        "mixture",
        {
            "datasets": DATASETS,
            "rows": TOTAL_ROWS,
            "spec": SPEC,
            "setup_s": setup_s,
            "baseline_work_s": base["seconds"],
            "baseline_process_s": base_s,
            "baseline_peak_mib": base_mem,
            "kalmix_create_s": ours["create_s"],
            "kalmix_process_s": ours_s,
            "kalmix_plan_s": ours["plan_s"],
            "kalmix_peak_mib": ours_mem,
            "read_baseline_s": rbase["seconds"],
            "read_baseline_peak_mib": rbase_mem,
            "read_kalmix_s": read["seconds"],
            "read_kalmix_peak_mib": read_mem,
            "kalmix_create_arrow_peak_mib": ours["arrow_peak_mib"],
            "kalmix_read_arrow_peak_mib": read["arrow_peak_mib"],
            "load_average": os.getloadavg()[0],
        },
        table,
    )


if __name__ == "__main__":
    main()
