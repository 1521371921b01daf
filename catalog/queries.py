"""Read-side queries of the catalog: categories, datasets, a dataset's versions and removals.

User-written `WHERE` clauses run inside a parenthesised sub-clause on a read-only connection
with external access switched off, so they can neither write the catalog nor touch files.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from catalog.db import Catalog
from catalog.vocabulary import DATASETS_VIEW_COLUMNS
from corpus.errors import KalmixError


def categories(cat: Catalog, task_type: str | None = None) -> pa.Table:
    sql = """
        SELECT c.name, c.task_type, c.domain, array_to_string(c.languages, ',') AS languages,
               count(d.name) AS datasets, coalesce(sum(d.rows), 0)::BIGINT AS rows,
               c.description, c.instruction
        FROM categories c LEFT JOIN datasets_view d ON d.category = c.name
        WHERE ? IS NULL OR c.task_type = ?
        GROUP BY ALL ORDER BY c.task_type, c.name
    """
    table = cat.query(sql, [task_type, task_type])
    if task_type and table.num_rows == 0:
        types = [
            r[0]
            for r in cat.query("SELECT DISTINCT task_type FROM categories ORDER BY 1").to_pylist()
        ]
        raise KalmixError(
            f"no categories of task type {task_type!r}; task types: {', '.join(types)}"
        )
    return table


def _guarded(con: duckdb.DuckDBPyConnection, where: str) -> str:
    """Accept one boolean expression only; the connection is read-only with no file access."""
    try:
        statements = duckdb.extract_statements(f"SELECT 1 WHERE ({where})")
    except duckdb.Error as err:
        first = str(err).splitlines()[0]
        raise KalmixError(
            f"bad WHERE clause: {first}. Columns you can use: {DATASETS_VIEW_COLUMNS}"
        ) from None
    if len(statements) != 1:
        raise KalmixError("a WHERE clause must be one expression (no ';' outside quotes)")
    con.execute("SET enable_external_access = false")
    return f"({where})"


def datasets(cat: Catalog, where: str | None = None) -> pa.Table:
    """Rows of `datasets_view`, optionally filtered by a user `WHERE`."""
    with cat.read() as con:
        clause = _guarded(con, where) if where else "true"
        try:
            return con.sql(
                "SELECT name, category, task_type, domain, language, "
                "array_to_string(languages, ',') AS languages, rows, latest_version, source, "
                f"last_operation, updated_at FROM datasets_view WHERE {clause} ORDER BY name"
            ).to_arrow_table()
        except duckdb.Error as err:
            raise KalmixError(
                f"bad WHERE clause: {err}. Columns you can use: {DATASETS_VIEW_COLUMNS}"
            ) from None


def select_datasets(cat: Catalog, where: str) -> list[str]:
    names = datasets(cat, where).column("name").to_pylist()
    if not names:
        raise KalmixError(f"WHERE {where!r} selects no dataset")
    return names


def versions_of(cat: Catalog, dataset: str) -> pa.Table:
    return cat.query(
        "SELECT version, rows, operation, parent_dataset, parent_version, params, "
        "stats->>'removed' AS removed, content_hash, created_at FROM dataset_versions "
        "WHERE dataset = ? ORDER BY version",
        [dataset],
    )


def removals_summary(cat: Catalog, dataset: str, version: int) -> pa.Table:
    return cat.query(
        "SELECT reason, count(*) AS rows, any_value(detail) AS example FROM removals "
        "WHERE dataset = ? AND version = ? GROUP BY reason ORDER BY rows DESC",
        [dataset, version],
    )
