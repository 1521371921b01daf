"""Every read the dashboard makes, cached for a few seconds per workspace.

Why this shape: DuckDB lets one process hold the catalog for writing and, while it does, no
other process may open the file at all. A long-lived dashboard connection (even read-only)
would therefore lock out `kalmix train` and `kalmix ingest`. So the app opens short read-only
connections through `Catalog.read()` (which retries while a writer holds the file), and caches
the *results* (`st.cache_data`, `TTL_S` seconds), never a connection.

Opening a DuckDB database costs about 80 ms (DuckDB 2 builds its function catalog per
instance), far more than any of these queries, so each page reads through one `snapshot()`:
one connection for all of the page's catalog reads, the catalog's own functions
(`queries`, `versions`, `mixtures`) included. The page also sees one consistent state.

Every function takes the workspace root as its first argument so that two workspaces never
share a cache entry. Results are pyarrow tables, plain dicts or the catalog's dataclasses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import streamlit as st

from catalog import mixtures, queries, runs, scores, versions
from catalog.db import Catalog, fetch_one
from catalog.mixtures import ManifestEntry, MixtureVersion
from catalog.schema import LATEST_VERSION
from catalog.versions import VersionInfo
from catalog.workspace import Workspace
from corpus import storage
from corpus.errors import KalmixError

TTL_S = 5
# A page should say "busy" rather than hang for the catalog's full write-lock timeout.
READ_LOCK_TIMEOUT_S = 20.0
SAMPLE_COLUMNS = ("id", "query", "positive", "negatives", "score", "label", "language")
LENGTH_SAMPLE_ROWS = 20_000
LENGTH_BINS = 40


def workspace_root() -> str:
    """The workspace the app was started on (`KALMIX_HOME`, set by `kalmix dashboard`)."""
    return str(Workspace.resolve().root)


@st.cache_resource(show_spinner=False)
def _workspace(root: str) -> Workspace:
    return Workspace.load(Path(root))


def catalog(root: str) -> Catalog:
    """A catalog handle that never migrates (that would write); reads retry on lock."""
    ws = _workspace(root)
    timeout = min(float(ws.settings["catalog"]["lock_timeout_s"]), READ_LOCK_TIMEOUT_S)
    return Catalog(ws, lock_timeout_s=timeout)


@dataclass
class _Snapshot(Catalog):
    """A `Catalog` whose reads all run on one open read-only connection."""

    con: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        yield self.con

    def write(self) -> NoReturn:
        raise KalmixError("the dashboard only reads the catalog; writes go through kalmix commands")


@contextmanager
def snapshot(root: str) -> Iterator[Catalog]:
    """One short read-only connection for a page's reads, as a `Catalog` the catalog API takes."""
    cat = catalog(root)
    with cat.read() as con:
        yield _Snapshot(cat.workspace, cat.lock_timeout_s, con)


def problem(root: str) -> str | None:
    """Why the app cannot show this workspace, or None when it can."""
    cat = catalog(root)
    if not cat.path.exists():
        return (
            f"{root} has no catalog.duckdb yet. Create it with: kalmix init {root} "
            f"(then restart: kalmix --workspace {root} dashboard)"
        )
    with cat.read() as con:
        version = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()
    version = version[0][0]
    if version < LATEST_VERSION:
        return (
            f"the catalog in {root} is at schema version {version}, this kalmix needs "
            f"{LATEST_VERSION}. Restart with `kalmix --workspace {root} dashboard`, which upgrades "
            "it before the app opens (the app itself never writes)."
        )
    if version > LATEST_VERSION:
        return (
            f"the catalog in {root} was written by a newer kalmix (schema {version} > "
            f"{LATEST_VERSION}); upgrade kalmix in this environment."
        )
    return None


def error_text(err: Exception) -> str:
    """One line for the page: a KalmixError's message, else the exception's type and text."""
    return str(err) if isinstance(err, KalmixError) else f"{type(err).__name__}: {err}"


# ----------------------------------------------------------------------------- catalog page


@dataclass(frozen=True)
class CatalogView:
    counts: dict[str, int]
    categories: pa.Table
    datasets: pa.Table | None  # None when the WHERE is invalid (see `where_error`)
    where_error: str | None
    languages: pa.Table


@st.cache_data(ttl=TTL_S, show_spinner=False)
def catalog_view(root: str, where: str | None) -> CatalogView:
    """Headline counts, categories, the datasets a WHERE selects, and rows by language."""
    with snapshot(root) as cat, cat.read() as con:
        row = fetch_one(
            con,
            """
            SELECT (SELECT count(*) FROM categories),
                   (SELECT count(DISTINCT category) FROM datasets),
                   (SELECT count(*) FROM datasets),
                   (SELECT count(*) FROM dataset_versions),
                   (SELECT coalesce(sum(rows), 0) FROM datasets_view),
                   (SELECT count(*) FROM mixture_versions),
                   (SELECT count(*) FROM runs),
                   (SELECT count(*) FROM scores)
            """,
        )
        keys = ("categories", "filled", "datasets", "versions", "rows", "mixtures", "runs")
        counts = dict(zip((*keys, "scores"), row, strict=True))
        categories = queries.categories(cat)
        languages = cat.query(
            """
            SELECT j.key AS language, sum(j.value::BIGINT) AS rows, count(*) AS datasets
            FROM datasets_view d, json_each(d.stats->'languages') j
            GROUP BY 1 ORDER BY rows DESC, language
            """
        )
        try:
            datasets, where_error = queries.datasets(cat, where), None
        except KalmixError as err:
            datasets, where_error = None, str(err)
    return CatalogView(counts, categories, datasets, where_error, languages)


# ----------------------------------------------------------------------------- dataset page


@dataclass(frozen=True)
class DatasetView:
    names: list[str]
    info: VersionInfo | None  # None when the catalog has no datasets
    versions: pa.Table
    family: pa.Table  # lineage graph: nodes with their parent
    removed: pa.Table  # reason, rows
    examples: pa.Table  # reason, id, detail
    parent_files: list[str]  # where the removed rows' text is


@st.cache_data(ttl=TTL_S, show_spinner=False)
def dataset_view(root: str, ref: str | None) -> DatasetView:
    """Everything the dataset page shows about `ref` (NAME or NAME@vN; None: the first)."""
    with snapshot(root) as cat, cat.read() as con:
        names = [r[0] for r in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]
        if not names:
            empty = pa.table({})
            return DatasetView([], None, empty, empty, empty, empty, [])
        info = versions.resolve(cat, ref or names[0])
        family = cat.query(FAMILY_SQL, [info.dataset] * 3)
        removed = cat.query(
            "SELECT reason, count(*) AS rows FROM removals WHERE dataset = ? AND version = ? "
            "GROUP BY reason ORDER BY rows DESC, reason",
            [info.dataset, info.version],
        )
        examples = cat.query(
            "SELECT reason, id, detail::VARCHAR AS detail FROM removals "
            "WHERE dataset = ? AND version = ? "
            "QUALIFY row_number() OVER (PARTITION BY reason ORDER BY id) <= 3 "
            "ORDER BY reason, id",
            [info.dataset, info.version],
        )
        # The catalog's own resolution locates the files: a workspace-relative folder, or a
        # URI when the workspace keeps its versions on an object store.
        parent = versions.resolve(cat, info.parent) if info.parent is not None else None
        parent_files = [str(f) for f in parent.files] if parent else []
        return DatasetView(
            names,
            info,
            queries.versions_of(cat, info.dataset),
            family,
            removed,
            examples,
            parent_files,
        )


# Every version of a dataset, all their ancestors (other datasets included), and the versions
# of other datasets made from it: the nodes and edges of the lineage graph.
FAMILY_SQL = """
WITH RECURSIVE chain(dataset, version, depth) AS (
    SELECT dataset, version, 0 FROM dataset_versions WHERE dataset = ?
    UNION
    SELECT v.parent_dataset, v.parent_version, c.depth + 1
    FROM chain c JOIN dataset_versions v USING (dataset, version)
    WHERE v.parent_dataset IS NOT NULL AND c.depth < 200
),
nodes AS (
    SELECT DISTINCT dataset, version FROM chain
    UNION
    SELECT dataset, version FROM dataset_versions WHERE parent_dataset = ? AND dataset <> ?
)
SELECT v.dataset, v.version, v.parent_dataset, v.parent_version, v.operation,
       v.params::VARCHAR AS params, v.rows, (v.stats->>'removed')::BIGINT AS removed,
       (v.stats->'removed_by_reason')::VARCHAR AS removed_by_reason, v.created_at
FROM nodes JOIN dataset_versions v USING (dataset, version)
ORDER BY v.dataset, v.version
"""


def _existing(files: tuple[str, ...] | list[str]) -> list[str]:
    return [f for f in files if storage.exists(f)]


@st.cache_resource(show_spinner=False)
def _files_db() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for reading version files (never the catalog, so it locks nothing);
    kept for the server's life because creating a DuckDB instance costs ~80 ms."""
    return duckdb.connect()


@st.cache_data(ttl=3600, show_spinner=False)
def removed_texts(parent_files: tuple[str, ...], ids: tuple[str, ...]) -> pa.Table:
    """The text of removed rows, looked up by id in the parent version (immutable: cached long)."""
    files = _existing(parent_files)
    if not ids or not files or len(files) != len(parent_files):
        return pa.table({"id": pa.array([], pa.string())})
    with _files_db().cursor() as con:
        return con.sql(
            f"SELECT id, any_value(query) AS query, any_value(positive) AS positive, "
            f"any_value(label) AS label FROM {storage.duckdb_scan(con, files)} "
            "WHERE id IN (SELECT unnest(?)) GROUP BY id",
            params=[list(ids)],
        ).to_arrow_table()


@st.cache_data(ttl=3600, show_spinner=False)
def sample_rows(files: tuple[str, ...], n: int = 20) -> pa.Table:
    """The first `n` rows of a version (versions are immutable, so this caches long)."""
    existing = _existing(files)
    if not existing:
        return pa.table({})
    pf = pq.ParquetFile(storage.open_input(existing[0]))
    cols = [c for c in SAMPLE_COLUMNS if c in pf.schema_arrow.names]
    batch = next(pf.iter_batches(batch_size=n, columns=cols), None)
    return pa.Table.from_batches([batch]) if batch is not None else pa.table({})


@st.cache_data(ttl=3600, show_spinner=False)
def length_histogram(files: tuple[str, ...]) -> pa.Table:
    """Character lengths of `query` and `positive` over the first `LENGTH_SAMPLE_ROWS` rows.

    Reading a bounded prefix keeps the page fast on a version of any size (the version's
    stats hold percentiles over every row). Bins are shared by both fields and span 0 to the
    99th percentile; longer texts fall in the last bin, so one outlier does not squash the chart.
    """
    out: dict[str, list] = {"field": [], "chars": [], "rows": []}
    existing = _existing(files)
    if not existing:
        return pa.table(out)
    names = storage.read_schema(existing[0]).names
    fields = [f for f in ("query", "positive") if f in names]
    if not fields:
        return pa.table(out)
    with _files_db().cursor() as con:
        got = con.sql(
            f"SELECT {', '.join(f'length({f}) AS {f}' for f in fields)} "
            f"FROM {storage.duckdb_scan(con, existing)} LIMIT {LENGTH_SAMPLE_ROWS}"
        ).to_arrow_table()
    merged = {f: got.column(f).drop_null().to_numpy().astype(np.int64) for f in fields}
    values = [v for v in merged.values() if v.size]
    if not values:
        return pa.table(out)
    top = max(int(np.percentile(np.concatenate(values), 99)), 1)
    edges = np.linspace(0, top, LENGTH_BINS + 1)
    for f, v in merged.items():
        if not v.size:
            continue
        counts, _ = np.histogram(np.minimum(v, top), bins=edges)
        out["field"] += [f] * LENGTH_BINS
        out["chars"] += [round(float(x), 1) for x in (edges[:-1] + edges[1:]) / 2]
        out["rows"] += counts.tolist()
    return pa.table(out)


# ----------------------------------------------------------------------------- mixtures page


@dataclass(frozen=True)
class MixturesView:
    mixtures: pa.Table  # one row per mixture (`list_mixtures`)
    refs: list[str]  # every name@vN, newest first
    datasets: pa.Table  # training datasets (not is_eval), for the builder's pickers


@st.cache_data(ttl=TTL_S, show_spinner=False)
def mixtures_view(root: str) -> MixturesView:
    with snapshot(root) as cat:
        refs = cat.query(
            "SELECT mixture || '@v' || version AS ref FROM mixture_versions "
            "ORDER BY created_at DESC, mixture, version DESC"
        )
        return MixturesView(
            mixtures.list_mixtures(cat),
            refs.column("ref").to_pylist(),
            queries.datasets(cat, "NOT is_eval"),
        )


@dataclass
class SearchView:
    refs: list[str]  # mixture versions registered by `kalmix mix search`, newest first
    record: dict | None  # the chosen one's search record (its spec's `search`)
    effects: pa.Table  # its stored attributions (`kalmix mix attribute`), every unit kind


@st.cache_data(ttl=TTL_S, show_spinner=False)
def search_view(root: str, ref: str | None) -> SearchView:
    """The searched mixtures, and for `ref` (default: the newest) its record and effects."""
    with snapshot(root) as cat:
        refs = (
            cat.query(
                "SELECT mixture || '@v' || version AS ref FROM mixture_versions "
                "WHERE json_exists(spec, '$.search') ORDER BY created_at DESC, mixture, version DESC"
            )
            .column("ref")
            .to_pylist()
        )
        ref = ref if ref in refs else (refs[0] if refs else None)
        if ref is None:
            return SearchView(refs, None, pa.table({}))
        mv = mixtures.resolve_mixture(cat, ref)
        effects = cat.query(
            "SELECT unit_kind, method, unit, metric, effect, sd, n FROM attributions "
            "WHERE mixture = ? AND version = ? ORDER BY unit_kind, metric, unit",
            [mv.name, mv.version],
        )
        return SearchView(refs, mv.spec["search"], effects)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def plan(root: str, spec_json: str) -> list[ManifestEntry]:
    """The manifest a spec would resolve to now (`plan_mixture`: reads only)."""
    with snapshot(root) as cat:
        return mixtures.plan_mixture(cat, json.loads(spec_json))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def mixture(root: str, ref: str) -> MixtureVersion:
    with snapshot(root) as cat:
        return mixtures.resolve_mixture(cat, ref)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def mixture_diff(root: str, a: str, b: str) -> pa.Table:
    with snapshot(root) as cat:
        return mixtures.diff_mixtures(cat, a, b)


# ----------------------------------------------------------------------------- runs page


@dataclass(frozen=True)
class RunsView:
    runs: pa.Table
    mixture_refs: list[str]


@st.cache_data(ttl=2, show_spinner=False)
def runs_view(root: str) -> RunsView:
    with snapshot(root) as cat:
        table = runs.list_runs(cat)
        refs = cat.query(
            "SELECT mixture || '@v' || version AS ref FROM mixture_versions "
            "ORDER BY created_at DESC, mixture, version DESC"
        )
    return RunsView(table, refs.column("ref").to_pylist())


def run_dir(root: str, name: str) -> Path:
    return runs.run_dir(catalog(root), name)


@st.cache_data(ttl=2, show_spinner=False)
def metrics(path: str, size: int) -> pa.Table:
    """A run's metrics.jsonl (one JSON object per logged step). `size` is the file size so a
    growing file is re-read; a half-written last line (the trainer is writing) is skipped."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append({k: v for k, v in row.items() if isinstance(v, int | float | str)})
    return pa.Table.from_pylist(rows) if rows else pa.table({})


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def log_tail(path: Path, max_bytes: int = 32_768) -> str:
    """The end of a log file (whole lines, as a terminal shows them), or '' if there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    if size > max_bytes and "\n" in text:
        text = text.split("\n", 1)[1]
    # A progress bar redraws its line with carriage returns: keep what a terminal would show.
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


# ----------------------------------------------------------------------------- compare page


FULL_SPLIT = "full split"
LABEL_COLUMNS = ("model", "kind", "mixture", "scores")


@dataclass(frozen=True)
class CompareView:
    """Runs and reference models x tasks.

    `table` has the label columns `model`, `kind` (run, model, reference), `mixture` and
    `scores` ("full split", or "sampled (N rows per split)" for `kalmix eval run --limit N`),
    then `mean`, `mean_<type>` and one column per task. A model evaluated both ways has two
    rows: every mean is over one row's own scores, so sampled and full-split scores never
    share a mean.
    """

    table: pa.Table
    task_types: dict[str, str]  # every scored task -> its task type ("other" when unknown)


def _sample_sizes(cat: Catalog) -> dict[tuple[str, str | None], str]:
    """(model, run) -> "100" or "50-100": the sample sizes of its latest sampled scores."""
    rows = cat.query(
        f"""
        WITH latest AS (
            SELECT model, run, split FROM scores
            WHERE NOT is_reference AND split LIKE '%{scores.SAMPLE_SPLIT_MARK}%'
            QUALIFY evaluated_at = max(evaluated_at) OVER (PARTITION BY model, run, task)
        )
        SELECT model, run,
               min(TRY_CAST(regexp_extract(split, '{scores.SAMPLE_SPLIT_MARK}(\\d+)', 1) AS BIGINT))
                   AS lo,
               max(TRY_CAST(regexp_extract(split, '{scores.SAMPLE_SPLIT_MARK}(\\d+)', 1) AS BIGINT))
                   AS hi
        FROM latest GROUP BY model, run
        """
    ).to_pylist()
    return {
        (r["model"], r["run"]): str(r["lo"]) if r["lo"] == r["hi"] else f"{r['lo']}-{r['hi']}"
        for r in rows
    }


@st.cache_data(ttl=TTL_S, show_spinner=False)
def compare(root: str, tasks: tuple[str, ...] | None = None) -> CompareView:
    """Full-split and sampled rows from `catalog.scores.compare_table` over the same task
    columns (latest evaluation per task), means recomputed per row over the shown tasks.

    The default columns are the tasks any run or model was evaluated on, full or sampled
    (every reference task when none was): a reference model then has its scores on those
    tasks beside the runs. A mean is empty when its row lacks one of the tasks it averages.
    """
    with snapshot(root) as cat:
        types = cat.query(
            "SELECT task, coalesce(any_value(task_type), 'other') AS task_type FROM scores "
            "GROUP BY task ORDER BY task"
        ).to_pylist()
        task_types = {r["task"]: r["task_type"] for r in types}
        if tasks:
            columns = list(tasks)
        else:
            evaluated = cat.query("SELECT DISTINCT task FROM scores WHERE NOT is_reference")
            columns = sorted(evaluated.column("task").to_pylist()) or sorted(task_types)
        full = scores.compare_table(cat, tasks=columns) if columns else pa.table({})
        sampled = scores.compare_table(cat, tasks=columns, samples=True) if columns else None
        sizes = _sample_sizes(cat)
    columns = sorted(columns, key=lambda t: (task_types.get(t, "other"), t))
    rows: list[dict[str, Any]] = []
    for table, is_sampled in ((full, False), (sampled, True)):
        for r in table.to_pylist() if table is not None else []:
            size = sizes.get((r["model"], r["model"] if r["kind"] == "run" else None))
            size = size or sizes.get((r["model"], None)) or "?"
            label = f"sampled ({size} rows per split)" if is_sampled else FULL_SPLIT
            rows.append(
                {
                    "model": r["model"],
                    "kind": r["kind"],
                    "mixture": r["mixture"],
                    "scores": label,
                    "values": {t: r.get(t) for t in columns},
                }
            )
    # Runs and models first (newest evaluation first, as compare_table orders them), each
    # with its sampled row right after its full-split one; reference models last.
    first = {}
    for i, r in enumerate(rows):
        first.setdefault((r["kind"], r["model"]), i)
    rows.sort(
        key=lambda r: (
            r["kind"] == "reference",
            first[(r["kind"], r["model"])],
            r["scores"] != FULL_SPLIT,
        )
    )
    present = sorted({task_types.get(t, "other") for t in columns})

    def mean(values: dict[str, float | None], names: list[str]) -> float | None:
        got = [values.get(t) for t in names]
        return sum(got) / len(got) if got and None not in got else None

    out: dict[str, list] = {c: [r[c] for r in rows] for c in LABEL_COLUMNS}
    out["mean"] = [mean(r["values"], columns) for r in rows]
    for task_type in present:
        names = [t for t in columns if task_types.get(t, "other") == task_type]
        out[f"mean_{task_type}"] = [mean(r["values"], names) for r in rows]
    for task in columns:
        out[task] = [r["values"][task] for r in rows]
    schema = pa.schema([(c, pa.string() if c in LABEL_COLUMNS else pa.float64()) for c in out])
    return CompareView(pa.table(out, schema=schema), task_types)
