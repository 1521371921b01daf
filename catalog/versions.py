"""Immutable dataset versions: stage, commit, resolve.

`commit` owns the whole write of a version. Each `Commit` brings its data as a table, which
`commit` writes into a staging folder itself, or as a folder a streaming writer filled inside
`staging()`. Then `commit` computes stats and a content hash, renames every staging folder
`data/<dataset>/.staging-<pid>-<uuid>/` to `data/<dataset>/v<N>/` and inserts the catalog rows,
all in one write transaction: one call registers one version or many, all or none. `data/` is
the workspace's data root: its own folder, or an object store (`corpus.storage`), where the
rename is a copy that the catalog row, committed after it, makes visible. If the transaction
fails the folders are renamed back and removed; if the process dies between rename and commit
the folder is an orphan that `kalmix catalog check` reports (and removes with `--fix`). Either
way no half-registered version is visible and earlier versions are untouched. Mixtures stage
and rename their rows file with the same two helpers (`staging_in`, `into_place`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import duckdb
import pyarrow as pa

from catalog.db import Catalog, fetch_one
from corpus import storage
from corpus.errors import KalmixError
from corpus.executor import pid_alive
from corpus.operator import count_reasons
from corpus.schema import RECORD_FIELDS, REMOVALS_SCHEMA, suggest
from corpus.storage import StorePath
from corpus.writer import write_table

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
REF_RE = re.compile(r"^(?P<name>[^@]+?)(?:@v?(?P<version>\d+))?$")


def parse_ref(text: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@vN` (datasets and mixtures alike) -> (name, version or None)."""
    match = REF_RE.match(text.strip())
    if not match:
        raise KalmixError(f"{text!r} is not NAME or NAME@vN")
    version = match.group("version")
    return match.group("name"), int(version) if version else None


@dataclass(frozen=True)
class Ref:
    """`name@vN` of something the catalog versions (a dataset or a mixture); `version=None`
    means the latest at resolution time. One grammar for both, so the CLI reads them alike."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(*parse_ref(text))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class VersionRef(Ref):
    """A dataset version; `dataset` is its name."""

    @property
    def dataset(self) -> str:
        return self.name


@dataclass(frozen=True)
class DatasetInfo:
    """What a new dataset is: written once, on its first version."""

    name: str
    category: str
    task_type: str
    source: str = ""
    tags: tuple[str, ...] = ()
    is_eval: bool = False


@dataclass(frozen=True)
class VersionInfo:
    dataset: str
    version: int
    path: StorePath
    files: list[StorePath]
    rows: int
    content_hash: str
    operation: str
    params: dict[str, Any]
    stats: dict[str, Any]
    parent: VersionRef | None
    category: str
    task_type: str

    @property
    def ref(self) -> VersionRef:
        return VersionRef(self.dataset, self.version)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole version as one table (operators that need every row at once)."""
        if not self.files:
            return pa.table({})
        return pa.concat_tables(
            [storage.read_table(f, columns) for f in self.files], promote_options="permissive"
        )


@dataclass(frozen=True)
class Staged:
    """A staging folder inside `folder` (a dataset's or a mixture's) that a writer fills;
    `into_place` renames it to `folder/v<N>`."""

    folder: StorePath
    path: StorePath


@dataclass(frozen=True)
class Commit:
    """One version to register: its data and how it was made.

    `data` is the version's records as a table, or a folder a writer filled inside
    `staging(cat, dataset)` (for data too large to hold at once).
    """

    dataset: str
    data: pa.Table | Staged
    operation: str
    params: dict[str, Any]
    parent: VersionRef | None = None
    info: DatasetInfo | None = None  # required when the dataset is new
    stats: dict[str, Any] = field(default_factory=dict)
    removals: pa.Table | None = None


def check_name(name: str, kind: str = "dataset") -> str:
    """`name` if it may name a `kind` (dataset, mixture, run): it becomes a folder name."""
    if not NAME_RE.match(name):
        raise KalmixError(
            f"{kind} name {name!r} is not valid: use letters, digits, '.', '_' or '-' "
            "(at most 128, not starting with a symbol)"
        )
    return name


@contextmanager
def staging_in(folder: StorePath) -> Iterator[Staged]:
    """A fresh staging folder in `folder`, removed when the block ends unless it was renamed
    into place: a failed or abandoned write leaves nothing behind."""
    try:
        path = storage.join(folder, f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        storage.makedirs(path)
    except PermissionError as err:
        raise KalmixError(f"workspace data folder is not writable: {err.filename}") from None
    except OSError as err:
        raise KalmixError(f"cannot write under {folder}: {err.strerror}") from None
    staged = Staged(folder, path)
    try:
        yield staged
    finally:
        if storage.exists(path):
            storage.rmtree(path)


def staging(cat: Catalog, dataset: str) -> contextlib.AbstractContextManager[Staged]:
    """A staging folder for a version of `dataset`, to fill and pass to `commit` in the block."""
    check_name(dataset)
    return staging_in(storage.join(cat.workspace.data_root, dataset))


@contextmanager
def into_place(staged: Staged, registered: int) -> Iterator[tuple[int, StorePath]]:
    """Inside a catalog write transaction: rename `staged` to `v<N>`, N one past `registered`
    (the catalog's highest) and every version folder on disk (orphans are never reused).
    Yields (N, the new folder); renamed back if the block, or the transaction, fails."""
    on_disk = [
        int(entry[1:])
        for entry, is_dir in storage.listdir(staged.folder)
        if is_dir and entry.startswith("v") and entry[1:].isdigit()
    ]
    number = max([registered, *on_disk]) + 1
    final = storage.join(staged.folder, f"v{number}")
    storage.move(staged.path, final)
    try:
        yield number, final
    except BaseException:
        try:
            storage.move(final, staged.path)
        except OSError:
            pass
        raise


def _content_hash(files: list[StorePath]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with storage.open_input(f) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def compute_stats(files: list[StorePath]) -> dict[str, Any]:
    """Rows per language, task types and text-length percentiles, computed by DuckDB."""
    if not files:
        return {"rows": 0, "languages": {}}
    con = duckdb.connect()
    src = storage.duckdb_scan(con, files)
    # One scan for the aggregates, one small GROUP BY for languages.
    quantiles = ", ".join(
        f"quantile_cont(length({col}), [0.5, 0.9, 0.99]), avg(length({col}))"
        for col in ("query", "positive")
    )
    rows, q_query, m_query, q_pos, m_pos, labels = fetch_one(
        con, f"SELECT count(*), {quantiles}, count(DISTINCT label) FROM {src}"
    )
    languages = dict(
        con.execute(
            f"SELECT coalesce(language, 'und'), count(*) FROM {src} GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    )
    lengths = {
        col: {k: round(x, 1) for k, x in zip(("p50", "p90", "p99", "mean"), [*q, m], strict=True)}
        for col, q, m in (("query", q_query, m_query), ("positive", q_pos, m_pos))
        if q is not None
    }
    con.close()
    return {"rows": rows, "languages": languages, "chars": lengths, "labels": labels}


def commit(cat: Catalog, *commits: Commit) -> list[VersionRef]:
    """Register versions atomically: all of them or none (one transaction).

    Tables are written into staging folders here; staged folders are used as they are. Every
    staging folder is gone afterwards: renamed into place, or removed on failure.
    """
    with ExitStack() as stack:
        folders = []
        for c in commits:
            if isinstance(c.data, Staged):
                folders.append(c.data)
            else:
                staged = stack.enter_context(staging(cat, c.dataset))
                write_table(staged.path, c.data)
                folders.append(staged)
        ids = cat.workspace.id_algorithm
        prepared = [_prepare(c, staged, ids) for c, staged in zip(commits, folders, strict=True)]
        return _register(cat, prepared, stack)


@dataclass(frozen=True)
class _Prepared:
    """A commit with what it needs computed before the transaction (stats read the data)."""

    commit: Commit
    staged: Staged
    files: list[StorePath]
    stats: dict[str, Any]
    removals: pa.Table | None
    columns: list[str]


def _prepare(c: Commit, staged: Staged, id_algorithm: str) -> _Prepared:
    files = storage.parquet_files(staged.path)
    if files:
        schema = storage.read_schema(files[0])
        missing = [f for f in RECORD_FIELDS if f not in schema.names]
        if missing:
            raise KalmixError(f"staged data lacks record fields {missing}")
    # the workspace's id algorithm: how the ids of records made in it are computed
    stats = {**compute_stats(files), "id_algorithm": id_algorithm, **c.stats}
    removals = c.removals
    if removals is not None:
        removals = removals.select(REMOVALS_SCHEMA.names).cast(REMOVALS_SCHEMA)
        stats.setdefault("removed", removals.num_rows)
        stats.setdefault("removed_by_reason", count_reasons(removals))
    columns = storage.read_schema(files[0]).names if files else list(RECORD_FIELDS)
    return _Prepared(c, staged, files, stats, removals, columns)


def _register(cat: Catalog, prepared: list[_Prepared], stack: ExitStack) -> list[VersionRef]:
    """Rename the folders into place and insert their rows, in one write transaction; the
    renames sit on `stack`, outside the transaction, so a failed commit renames them back."""
    refs: list[VersionRef] = []
    with cat.write() as con:
        for p in prepared:
            c, name = p.commit, p.commit.dataset
            known = fetch_one(
                con, "SELECT category, task_type FROM datasets WHERE name = ?", [name]
            )
            if known is None:
                if c.info is None:
                    raise KalmixError(f"unknown dataset {name!r}")
                _insert_dataset(con, c.info, p.columns)
            in_catalog = con.execute(
                "SELECT coalesce(max(version), 0) FROM dataset_versions WHERE dataset = ?", [name]
            ).fetchall()[0][0]
            number, final = stack.enter_context(into_place(p.staged, in_catalog))
            langs = p.stats.get("languages", {})
            con.execute(
                "INSERT INTO dataset_versions(dataset, version, path, files, rows, content_hash,"
                " language, languages, parent_dataset, parent_version, operation, params, stats)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    name,
                    number,
                    cat.workspace.record(final),
                    [storage.name(f) for f in p.files],
                    p.stats["rows"],
                    _content_hash([storage.join(final, storage.name(f)) for f in p.files]),
                    next(iter(langs), None),
                    list(langs),
                    c.parent.dataset if c.parent else None,
                    c.parent.version if c.parent else None,
                    c.operation,
                    json.dumps(c.params, default=str),
                    json.dumps(p.stats, default=str),
                ],
            )
            if p.removals is not None and p.removals.num_rows:
                con.register("staged_removals", p.removals)
                con.execute(
                    "INSERT INTO removals SELECT ?, ?, id, reason, detail FROM staged_removals",
                    [name, number],
                )
                con.unregister("staged_removals")
            refs.append(VersionRef(name, number))
    return refs


def _insert_dataset(con: duckdb.DuckDBPyConnection, info: DatasetInfo, columns: list[str]) -> None:
    check_name(info.name)
    category = fetch_one(con, "SELECT task_type FROM categories WHERE name = ?", [info.category])
    if category is None:
        names = [r[0] for r in con.execute("SELECT name FROM categories").fetchall()]
        raise KalmixError(
            f"unknown category {info.category!r}{suggest(info.category, names)} "
            "(list them with: kalmix catalog categories)"
        )
    con.execute(
        "INSERT INTO datasets(name, category, task_type, source, tags, columns, is_eval) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            info.name,
            info.category,
            info.task_type,
            info.source,
            list(info.tags),
            columns,
            info.is_eval,
        ],
    )


def fetch_version(
    con, kind: str, name: str, version: int | None, columns: str
) -> tuple[tuple | None, list[int]]:
    """`columns` of one version of the `kind` ("dataset" or "mixture") `name` (the latest when
    `version` is None), and, when there is no such row, the versions that do exist, for the
    error the caller raises."""
    table, key = f"{kind}_versions", kind
    sql = f"SELECT {columns} FROM {table} WHERE {key} = ? "
    if version is None:
        row = fetch_one(con, sql + "ORDER BY version DESC LIMIT 1", [name])
    else:
        row = fetch_one(con, sql + "AND version = ?", [name, version])
    if row is not None:
        return row, []
    existing = con.execute(f"SELECT version FROM {table} WHERE {key} = ? ORDER BY 1", [name])
    return None, [r[0] for r in existing.fetchall()]


def resolve(cat: Catalog, ref: VersionRef | str) -> VersionInfo:
    """The version a reference names (latest if unversioned), or a clear error."""
    if isinstance(ref, str):
        ref = VersionRef.parse(ref)
    with cat.read() as con:
        dataset = fetch_one(
            con, "SELECT category, task_type FROM datasets WHERE name = ?", [ref.dataset]
        )
        if dataset is None:
            names = [r[0] for r in con.execute("SELECT name FROM datasets").fetchall()]
            raise KalmixError(
                f"unknown dataset {ref.dataset!r}{suggest(ref.dataset, names)} "
                "(list them with: kalmix catalog datasets)"
            )
        row, existing = fetch_version(
            con,
            "dataset",
            ref.dataset,
            ref.version,
            "version, path, files, rows, content_hash, operation, params, stats, "
            "parent_dataset, parent_version",
        )
        if row is None:
            versions = ", ".join(f"v{v}" for v in existing) or "none"
            raise KalmixError(f"{ref} does not exist; {ref.dataset} has versions: {versions}")
    version, path, files, rows, chash, operation, params, stats, pdataset, pversion = row
    root = cat.workspace.locate(path)
    return VersionInfo(
        dataset=ref.dataset,
        version=version,
        path=root,
        files=[storage.join(root, f) for f in files],
        rows=rows,
        content_hash=chash,
        operation=operation,
        params=json.loads(params) if params else {},
        stats=json.loads(stats) if stats else {},
        parent=VersionRef(pdataset, pversion) if pdataset else None,
        category=dataset[0],
        task_type=dataset[1],
    )


def lineage(cat: Catalog, ref: VersionRef | str) -> list[VersionInfo]:
    """The version and its ancestors, newest first."""
    chain = [resolve(cat, ref)]
    while chain[-1].parent is not None and len(chain) < 1000:
        chain.append(resolve(cat, chain[-1].parent))
    return chain


@dataclass(frozen=True)
class CheckReport:
    orphans: list[StorePath]
    stale_staging: list[StorePath]
    missing: list[str]


def check(cat: Catalog, fix: bool = False) -> CheckReport:
    """Find version folders with no catalog row, abandoned staging folders, and missing data.

    Dataset versions live in `data/<name>/vN/` (the data root, local or a store), mixture
    versions in `mixtures/<name>/vN/`; both are staged and renamed the same way, so both are
    checked the same way.
    """
    ws = cat.workspace
    with cat.read() as con:
        rows = con.execute("SELECT dataset, version, path, files FROM dataset_versions").fetchall()
        mixes = con.execute("SELECT mixture, version, ids_path FROM mixture_versions").fetchall()
    registered = {_key(ws.locate(r[2])) for r in rows}
    registered |= {_key(ws.locate(ids).parent) for _, _, ids in mixes if ids}
    missing = [
        f"{d}@v{v}"
        for d, v, p, files in rows
        if not all(storage.exists(storage.join(ws.locate(p), f)) for f in files)
    ]
    missing += [f"mixture {m}@v{v}" for m, v, ids in mixes if ids and not ws.locate(ids).exists()]
    orphans, stale = [], []
    for parent in (ws.data_root, ws.root / "mixtures"):
        for name, is_dir in storage.listdir(parent):
            folder = storage.join(parent, name)
            for entry, is_version_dir in storage.listdir(folder) if is_dir else []:
                if not is_version_dir:
                    continue
                if entry.startswith(".staging-"):
                    pid = entry.split("-")[1]
                    if not pid_alive(int(pid) if pid.isdigit() else -1):
                        stale.append(storage.join(folder, entry))
                elif entry.startswith("v") and _key(storage.join(folder, entry)) not in registered:
                    orphans.append(storage.join(folder, entry))
    if fix:
        for folder in orphans + stale:
            storage.rmtree(folder)
    return CheckReport(orphans, stale, missing)


def _key(path: StorePath) -> str:
    return str(path).rstrip("/") if storage.is_uri(path) else str(Path(path).resolve())
