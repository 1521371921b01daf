"""`kalmix ingest` and `kalmix corpora add`: source tables into a new immutable dataset version.

`ingest_tables` is the one path (checks, record conversion, staging, commit); `ingest` feeds
it a file's tables, `kalmix corpora add` a raw corpus' (`corpus.corpora`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog import versions
from catalog.db import Catalog, fetch_one
from catalog.versions import Commit, DatasetInfo, VersionRef
from corpus import storage
from corpus.errors import KalmixError
from corpus.executor import prefetch_map
from corpus.readers import ReadStats, iter_tables
from corpus.schema import parse_mapping, resolve_columns, suggest, to_records
from corpus.writer import ShardWriter


@dataclass
class IngestResult:
    ref: VersionRef
    rows: int
    invalid: int
    seconds: float


def ingest(
    cat: Catalog,
    path: Path | str,
    *,
    name: str,
    category: str,
    task_type: str | None = None,
    mapping: str | dict[str, str] | None = None,
    language: str | None = None,
    fmt: str | None = None,
    skip_invalid: bool = False,
    split: str | None = None,
    source: str | None = None,
    is_eval: bool = False,
    batch_rows: int = 65_536,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """A file (or URI, or `datasets` folder) as a new version of dataset `name`."""
    path = path if storage.is_uri(path) else Path(path)
    stats = ReadStats()
    return ingest_tables(
        cat,
        iter_tables(
            path, fmt, batch_rows=batch_rows, skip_invalid=skip_invalid, split=split, stats=stats
        ),
        name=name,
        category=category,
        task_type=task_type,
        mapping=mapping,
        language=language,
        source=source or storage.name(path),
        is_eval=is_eval,
        what=str(path),
        params={
            "file": str(path) if storage.is_uri(path) else str(path.resolve()),
            "format": fmt,
            "language": language,
            "skip_invalid": skip_invalid,
            "split": split,
        },
        read_stats=stats,
        progress=progress,
    )


def ingest_tables(
    cat: Catalog,
    tables: Iterator[pa.Table],
    *,
    name: str,
    category: str,
    source: str,
    what: str,
    params: dict[str, Any],
    task_type: str | None = None,
    mapping: str | dict[str, str] | None = None,
    language: str | None = None,
    is_eval: bool = False,
    read_stats: ReadStats | None = None,
    extra_stats: Callable[[], dict[str, Any]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """The one ingest path: source tables -> records -> staged shards -> one committed version.

    `tables` should be lazy (a generator): it is first pulled after the name and category are
    checked, so nothing is read for a command that fails anyway. Columns map onto the record schema by name (or `mapping`);
    `params` says where the data came from and is stored with the version, with the column map
    added. Data is staged and renamed into place before the catalog row is committed, so a
    failure or a kill at any point leaves no version behind.
    """
    start = time.perf_counter()
    versions.check_name(name)
    with cat.read() as con:
        row = fetch_one(
            con, "SELECT task_type, instruction FROM categories WHERE name = ?", [category]
        )
        names = (
            [r[0] for r in con.execute("SELECT name FROM categories").fetchall()]
            if row is None
            else []
        )
        existing = fetch_one(con, "SELECT category, task_type FROM datasets WHERE name = ?", [name])
    if row is None:
        raise KalmixError(
            f"unknown category {category!r}{suggest(category, names)} "
            "(list them with: kalmix catalog categories)"
        )
    task_type = task_type or row[0]
    if existing and (existing[0], existing[1]) != (category, task_type):
        raise KalmixError(
            f"dataset {name!r} already exists as {existing[1]} in category {existing[0]!r}; "
            "choose another --name, or the same category and task type to add a version"
        )
    parsed = parse_mapping(mapping) if isinstance(mapping, str | None) else dict(mapping)
    stats = read_stats or ReadStats()
    with versions.staging(cat, name) as staged:
        writer = ShardWriter(staged.path)
        columns: dict[str, str] = {}

        def convert(table: pa.Table) -> pa.Table:
            if not columns:
                columns.update(resolve_columns(table.column_names, task_type, parsed))
            return to_records(
                table,
                columns,
                task_type=task_type,
                category=category,
                source=source,
                language=language,
                id_algorithm=cat.workspace.id_algorithm,
            )

        # The first batch fixes the column mapping, so convert it before going parallel.
        first = next(tables, None)
        rest = prefetch_map(convert, tables, workers=2, ahead=3) if first is not None else iter(())
        for records in [convert(first)] if first is not None else []:
            writer.write(records)
        for records in rest:
            writer.write(records)
            if progress:
                progress(writer.rows)
        writer.close()
        if writer.rows == 0:
            detail = f" ({stats.invalid} invalid lines skipped)" if stats.invalid else ""
            raise KalmixError(f"{what} holds no records{detail}: nothing ingested")
        if existing:
            _check_schema(cat, name, columns)
        commit_stats: dict[str, Any] = {
            "invalid_skipped": stats.invalid,
            "invalid_lines": stats.invalid_lines,
        }
        if extra_stats:
            commit_stats.update(extra_stats())
        [ref] = versions.commit(
            cat,
            Commit(
                name,
                staged,
                "ingest",
                {**params, "map": columns},
                info=DatasetInfo(name, category, task_type, source=source, is_eval=is_eval),
                stats=commit_stats,
            ),
        )
    return IngestResult(ref, writer.rows, stats.invalid, time.perf_counter() - start)


def _check_schema(cat: Catalog, name: str, columns: dict[str, str]) -> None:
    """A new version of an ingested dataset must fill the same record fields as the last one."""
    latest = versions.resolve(cat, name)
    before = sorted(latest.params.get("map") or {})
    if latest.operation == "ingest" and before != sorted(columns):
        raise KalmixError(
            f"dataset {name!r} already exists with fields {', '.join(before)}; this input gives "
            f"{', '.join(sorted(columns))}. Use another --name, or --map the same fields"
        )
