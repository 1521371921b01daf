"""Short-lived DuckDB connections with bounded retry: the catalog's concurrency model.

DuckDB lets one process hold a database file for writing, and while it does no other process
may open it at all. So no connection lives longer than one transaction: writers open, do one
transaction, close; readers open read-only, query, close. A connection that meets a lock waits
with exponential backoff and jitter up to `lock_timeout_s`, then fails with a clear message.
A dashboard and a training run can therefore share one catalog.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from catalog.schema import LATEST_VERSION, migrate
from catalog.workspace import Workspace
from corpus.errors import KalmixError


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text or "conflicting lock" in text or "being used by another process" in text


@dataclass
class Catalog:
    workspace: Workspace
    lock_timeout_s: float = 60.0

    @property
    def path(self) -> Path:
        return self.workspace.catalog_path

    @classmethod
    def open(cls, workspace: Workspace) -> Catalog:
        """The workspace's catalog: created and seeded with the taxonomy on first use (`kalmix
        init`), and brought up to the latest schema when an older kalmix made it."""
        cat = cls(workspace, float(workspace.settings["catalog"]["lock_timeout_s"]))
        cat.ensure_schema()
        return cat

    def ensure_schema(self) -> None:
        if self.path.exists():
            with self.read() as con:
                if _schema_version(con) >= LATEST_VERSION:
                    return
        with self.write() as con:
            migrate(con)

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as err:
                if not _is_lock_error(err):
                    raise KalmixError(f"cannot open catalog {self.path}: {err}") from None
                if time.monotonic() > deadline:
                    raise KalmixError(
                        f"catalog {self.path} stayed locked by another process for "
                        f"{self.lock_timeout_s:.0f}s; try again, or raise catalog.lock_timeout_s "
                        "in kalmix.toml"
                    ) from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for one short query session."""
        con = self._connect(read_only=True)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: committed on success, rolled back on any exception."""
        if not self.path.parent.exists():
            raise KalmixError(f"workspace folder {self.path.parent} does not exist")
        con = self._connect(read_only=False)
        try:
            con.begin()
            yield con
            con.commit()
        except BaseException:
            try:
                con.rollback()
            except duckdb.Error:
                pass
            raise
        finally:
            con.close()

    def query(self, sql: str, params: list | None = None):
        """Run one read query and return a pyarrow table (for CLI, dashboard, tests)."""
        with self.read() as con:
            return con.sql(sql, params=params or None).to_arrow_table()


def _schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchall()[0][0]
    if not exists:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple | None:
    """First row or None, with the result fully consumed (DuckDB 2 refuses new work otherwise)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None
