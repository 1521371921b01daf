"""Dashboard page render times on a large catalog, beside the framework's own floor.

Setup (not timed): a workspace whose catalog is generated with SQL inserts through
`Catalog.write()`: 2,000 datasets in 120 of the 150 categories (30 left empty), 10 versions each
(20,000 versions, each derived one with removals: 360,000 removal rows), 20 mixtures x 5
versions (manifests of 100 datasets), 200 runs with a 500-step metrics.jsonl each, and
200 runs x 30 tasks of scores plus 10 reference models x 30 tasks. One dataset has real Parquet
data (its last two versions, 50,000 rows) so the dataset page reads files as it would.

Timed, in this process, with `streamlit.testing.v1.AppTest` (the script run, element tree
built, as in a browser session without the network):
- floor: a page that only writes a title (AppTest's own cost per run);
- every page with cold caches (`st.cache_data.clear()` before each run: what a user sees
  when the few-second cache has expired), median of 5, and warm (cached) median of 5;
- every page again while another process commits to the catalog in a loop (a new dataset
  version every ~50 ms through `catalog.versions.commit`), which is the "training run / ingest
  writing" case: reads wait for the writer's short transactions.
Target: every page under 1 s cold.

Run: .venv/bin/python -m benchmarks.dashboard
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results
from catalog.db import Catalog

DATASETS = 2000
VERSIONS = 10
RUNS = 200
TASKS = 30
REFERENCES = 10
MIXTURES, MIXTURE_VERSIONS, MIXTURE_DATASETS = 20, 5, 100
REMOVALS_PER_VERSION = 20
DATA_ROWS = 50_000
REPEATS = 5
LANGS = ("en", "zh", "de", "fr", "es", "ja")
TASK_TYPES = (
    "retrieval",
    "sts",
    "classification",
    "clustering",
    "reranking",
    "pair_classification",
)
APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
# (page, query parameters, session state before the run): each page, and each tab that
# reads something of its own.
VIEWS: dict[str, tuple[str, dict, dict]] = {
    "catalog: categories": ("views/catalog.py", {}, {}),
    "catalog: datasets": ("views/catalog.py", {}, {"catalog_tab": "Datasets"}),
    "dataset (50k rows, 10 versions)": ("views/dataset.py", {"name": "ds-0001"}, {}),
    "mixtures: build, preview of one task type": (
        "views/mixtures.py",
        {},
        {"mb_types": ["retrieval"]},
    ),
    "mixtures: versions": ("views/mixtures.py", {}, {"mix_tab": "Versions"}),
    "mixtures: diff": ("views/mixtures.py", {}, {"mix_tab": "Diff"}),
    "runs": ("views/runs.py", {"run": "run-000"}, {}),
    "compare": ("views/compare.py", {}, {}),
}


def generate(root: Path):
    """The large workspace, inserted with SQL through `Catalog.write()`."""
    from catalog.workspace import Workspace

    ws = Workspace.init(root)
    cat = Catalog.open(ws)
    with cat.write() as con:
        con.execute(
            f"""
            CREATE TEMP TABLE cats AS
            SELECT name, task_type, row_number() OVER (ORDER BY name) - 1 AS k FROM categories;
            INSERT INTO datasets(name, category, task_type, source, tags, columns, is_eval)
            SELECT 'ds-' || lpad(i::VARCHAR, 4, '0'), c.name, c.task_type, 'bench://' || i,
                   ['bench'], ['id', 'query', 'positive'], i % 100 = 99
            FROM range({DATASETS}) t(i) JOIN cats c ON c.k = i % 120;
            INSERT INTO dataset_versions
            SELECT 'ds-' || lpad(i::VARCHAR, 4, '0'), v,
                   'data/ds-' || lpad(i::VARCHAR, 4, '0') || '/v' || v, ['part-00000.parquet'],
                   rows, md5(i || '-' || v), lang, [lang, 'en'],
                   CASE WHEN v > 1 THEN 'ds-' || lpad(i::VARCHAR, 4, '0') END,
                   CASE WHEN v > 1 THEN v - 1 END,
                   CASE WHEN v = 1 THEN 'ingest' ELSE ['dedup', 'langid', 'filter',
                        'decontaminate', 'mine'][1 + v % 5] END,
                   json_object('threshold', 0.8, 'seed', v),
                   json_object('rows', rows, 'languages', json_object(lang, rows * 0.8, 'en',
                               rows * 0.2), 'chars', json_object('query', json_object('p50', 40,
                               'p90', 90, 'p99', 200, 'mean', 50)),
                               'removed', CASE WHEN v > 1 THEN {REMOVALS_PER_VERSION} END,
                               'removed_by_reason', CASE WHEN v > 1 THEN json_object(
                                   'near_dup', {REMOVALS_PER_VERSION // 2}, 'lang_mismatch',
                                   {REMOVALS_PER_VERSION // 2}) END),
                   now() - INTERVAL (({VERSIONS} - v) * 60 + i % 60) MINUTE
            FROM (SELECT i, v, 100000 - v * {REMOVALS_PER_VERSION} + (i * 7919) % 50000 AS rows,
                         {list(LANGS)}[1 + i % {len(LANGS)}] AS lang
                  FROM range({DATASETS}) a(i), range(1, {VERSIONS} + 1) b(v));
            INSERT INTO removals
            SELECT dataset, version, md5(dataset || version || r),
                   CASE WHEN r % 2 = 0 THEN 'near_dup' ELSE 'lang_mismatch' END,
                   json_object('score', r / 20)
            FROM dataset_versions, range({REMOVALS_PER_VERSION}) t(r) WHERE version > 1;
            """
        )
    _mixtures(cat)
    _runs_and_scores(ws, cat)
    _real_data(ws, cat, "ds-0001")
    return ws


def _mixtures(cat) -> None:
    rng = random.Random(1)
    rows = []
    for m in range(MIXTURES):
        for v in range(1, MIXTURE_VERSIONS + 1):
            picked = sorted(rng.sample(range(DATASETS), MIXTURE_DATASETS))
            manifest = [
                {
                    "dataset": f"ds-{i:04d}",
                    "version": VERSIONS,
                    "task_type": TASK_TYPES[i % len(TASK_TYPES)],
                    "category": f"cat-{i % 120}",
                    "instruction": None,
                    "rows_available": 90_000,
                    "rows_taken": 1000 + i,
                    "weight": 1 / MIXTURE_DATASETS,
                    "languages": {LANGS[i % len(LANGS)]: 800 + i, "en": 200},
                }
                for i in picked
            ]
            spec = {"where": f"rows > {m * 1000}", "weighting": "proportional", "seed": v}
            rows.append(
                (
                    f"mix-{m:02d}",
                    v,
                    json.dumps(spec),
                    json.dumps(manifest),
                    f"mixtures/mix-{m:02d}/v{v}/rows.parquet",
                    sum(e["rows_taken"] for e in manifest),
                    f"{m:02d}{v:02d}" * 8,
                )
            )
    with cat.write() as con:
        con.executemany(
            "INSERT INTO mixtures(name) VALUES (?)", [[f"mix-{m:02d}"] for m in range(MIXTURES)]
        )
        con.executemany(
            "INSERT INTO mixture_versions(mixture, version, spec, manifest, ids_path, rows, "
            "content_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def _runs_and_scores(ws, cat) -> None:
    statuses = ["completed"] * 8 + ["failed", "cancelled"]
    runs, scores = [], []
    for r in range(RUNS):
        name = f"run-{r:03d}"
        status = "running" if r == RUNS - 1 else statuses[r % len(statuses)]
        folder = ws.runs_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metrics.jsonl", "w") as fh:
            for step in range(1, 501):
                fh.write(
                    json.dumps(
                        {
                            "step": step,
                            "loss": 3 / step**0.4,
                            "lr": 1e-5,
                            "samples_per_s": 900 + step % 37,
                        }
                    )
                    + "\n"
                )
        (folder / "stdout.log").write_text("".join(f"step {s} loss ...\n" for s in range(500)))
        error = "RuntimeError: CUDA out of memory" if status == "failed" else None
        runs.append(
            (name, f"mix-{r % MIXTURES:02d}", 1 + r % MIXTURE_VERSIONS, status, str(folder), error)
        )
        for t in range(TASKS):  # every run scored: 200 x 30, the size the issue asks for
            scores.append(
                (
                    name,
                    name,
                    False,
                    f"Task{t:02d}",
                    TASK_TYPES[t % 6],
                    0.4 + 0.3 * ((r * 31 + t * 17) % 100) / 100,
                )
            )
    for m in range(REFERENCES):
        for t in range(TASKS):
            scores.append(
                (
                    None,
                    f"reference/model-{m}",
                    True,
                    f"Task{t:02d}",
                    TASK_TYPES[t % 6],
                    0.5 + 0.3 * ((m * 13 + t * 7) % 100) / 100,
                )
            )
    with cat.write() as con:
        con.executemany(
            "INSERT INTO runs(name, kind, mixture, mixture_version, base_model, config, status, "
            "path, error) VALUES (?, 'train', ?, ?, 'Qwen2-0.5B', '{}', ?, ?, ?)",
            runs,
        )
        con.executemany(
            "INSERT INTO scores(run, model, is_reference, task, task_type, split, main_score) "
            "VALUES (?, ?, ?, ?, ?, 'test', ?)",
            scores,
        )


def _real_data(ws, cat, dataset: str) -> None:
    """Real Parquet for the dataset page's version and its parent; removals point into it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = "the of data model embedding query passage answer train text".split()
    rng = random.Random(3)
    n = DATA_ROWS
    ids = [f"{dataset}-{i:06d}" for i in range(n)]
    table = pa.table(
        {
            "id": ids,
            "task_type": ["retrieval"] * n,
            "category": ["bench"] * n,
            "instruction": [None] * n,
            "query": [" ".join(rng.choices(words, k=rng.randint(3, 20))) for _ in range(n)],
            "positive": [" ".join(rng.choices(words, k=rng.randint(20, 200))) for _ in range(n)],
            "negatives": [[] for _ in range(n)],
            "score": [None] * n,
            "label": [None] * n,
            "language": [LANGS[i % 3] for i in range(n)],
            "source": ["bench"] * n,
            "meta": ["{}"] * n,
        }
    )
    removed = ids[:REMOVALS_PER_VERSION]
    for version, data in ((VERSIONS - 1, table), (VERSIONS, table.slice(len(removed)))):
        folder = ws.root / "data" / dataset / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, folder / "part-00000.parquet")
    with cat.write() as con:
        con.execute("DELETE FROM removals WHERE dataset = ? AND version = ?", [dataset, VERSIONS])
        con.executemany(
            "INSERT INTO removals VALUES (?, ?, ?, ?, '{}')",
            [
                [dataset, VERSIONS, i, "near_dup" if k % 2 else "lang_mismatch"]
                for k, i in enumerate(removed)
            ],
        )


# Another process writing the catalog as ingest and a training run do: a one-row version of
# `writer` and the run's summary every PAUSE seconds, printing the count. `python -c WRITER
# WORKSPACE RUN PAUSE`; tests/dashboard/test_pages.py runs it too.
WRITER = """
import sys, time
from catalog import runs, versions
from catalog.db import Catalog
from catalog.versions import Commit, DatasetInfo
from catalog.workspace import Workspace
from corpus.schema import record_table
cat = Catalog.open(Workspace.load(sys.argv[1]))
run, pause, n = sys.argv[2], float(sys.argv[3]), 0
info = DatasetInfo("writer", "faq-retrieval", "retrieval")
while True:
    table = record_table([f"q{n}"], task_type="retrieval", category="faq-retrieval",
        positive="p", language="en", source="w")
    versions.commit(cat, Commit("writer", table, "ingest", {}, info=info))
    runs.update_run(cat, run, summary={"step": n})
    n += 1
    print(n, flush=True)
    time.sleep(pause)
"""


def render_times(root: Path, view: tuple[str, dict, dict], cold: bool) -> list[float]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    page, query, state = view
    os.environ["KALMIX_HOME"] = str(root)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    at.switch_page(page)
    at.query_params.update(query)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    problems = [e.value for e in (*at.exception, *at.error)]
    if problems:
        raise RuntimeError(f"{page}: {problems}")
    times, cpu = [], []
    for _ in range(REPEATS):
        if cold:
            st.cache_data.clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        at.run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times, cpu


def floor_times() -> list[float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string("import streamlit as st\nst.title('floor')", default_timeout=60)
    at.run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kalmix-dash-bench-") as tmp:
        start = time.perf_counter()
        ws = generate(Path(tmp) / "ws")
        setup_s = time.perf_counter() - start
        size_mib = ws.catalog_path.stat().st_size / 2**20
        floor = statistics.median(floor_times())
        results = {}
        for name, view in VIEWS.items():
            cold, cold_cpu = render_times(ws.root, view, cold=True)
            warm, _ = render_times(ws.root, view, cold=False)
            results[name] = {
                "cold_s": statistics.median(cold),
                "cold_max_s": max(cold),
                "cold_cpu_s": statistics.median(cold_cpu),
                "warm_s": statistics.median(warm),
            }
            print(name, results[name], flush=True)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(ws.root), "run-199", "0.05"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            writer.stdout.readline()  # the writer is committing
            for name, view in VIEWS.items():
                busy, _ = render_times(ws.root, view, cold=True)
                results[name]["writing_s"] = statistics.median(busy)
                results[name]["writing_max_s"] = max(busy)
                print(name, "while writing", results[name], flush=True)
        finally:
            writer.terminate()
            commits, _ = writer.communicate(timeout=60)
        commits = len(commits.split()) + 1
        load = os.getloadavg()[0]
    rows = "\n".join(
        f"| {name} | {r['cold_s']:.3f} | {r['cold_max_s']:.3f} | {r['cold_cpu_s']:.3f} | "
        f"{r['warm_s']:.3f} | {r['writing_s']:.3f} | {r['writing_max_s']:.3f} |"
        for name, r in results.items()
    )
    worst = max(r["cold_max_s"] for r in results.values())
    md = (
        f"Catalog: {DATASETS:,} datasets, {DATASETS * VERSIONS:,} versions, "
        f"{DATASETS * (VERSIONS - 1) * REMOVALS_PER_VERSION:,} removal rows, "
        f"{MIXTURES * MIXTURE_VERSIONS} mixture versions, {RUNS} runs, scores {RUNS} runs x "
        f"{TASKS} tasks + {REFERENCES} reference models x {TASKS}; catalog file "
        f"{size_mib:.0f} MiB; setup {setup_s:.0f}s untimed. AppTest script-run seconds, median "
        f"of {REPEATS} (max beside it); CPU: process CPU seconds of a cold run (all threads: "
        "less sensitive than wall time to other work on a shared machine).\n\n"
        "| page (view) | cold cache | cold max | cold CPU | warm cache | cold, while another "
        "process writes | max while writing |\n|---|---|---|---|---|---|---|\n"
        f"| floor: AppTest page with only a title (baseline) | {floor:.3f} | | | {floor:.3f} | "
        "| |\n"
        f"{rows}\n\n"
        f"Slowest cold render: {worst:.2f} s (target < 1 s). The writer committed {commits} "
        "dataset versions (plus a runs update each) while the pages rendered.\n\n"
        f"Load average of this shared machine: {load_start:.1f} when the run started, "
        f"{load:.1f} when it ended, on {os.cpu_count()} cores."
    )
    write_results(
        "dashboard",
        {
            "floor_s": floor,
            "pages": results,
            "setup_s": setup_s,
            "catalog_mib": size_mib,
            "writer_commits": commits,
            "load_average": {"start": load_start, "end": load},
        },
        md,
    )


if __name__ == "__main__":
    main()
