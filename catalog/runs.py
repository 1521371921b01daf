"""Training runs in the catalog: one `runs` row per run, written by the trainer's main process.

A row is created when a run starts (status `running`) with everything needed to reproduce it:
the mixture version, the base model, the full training config, the git commit of the code and
the folder (relative to the workspace) that holds its checkpoints, metrics and exported model.
A multi-stage run's row holds its last stage's mixture; `config.stages` lists every stage.
While it trains, `summary` is refreshed at every checkpoint so a dashboard can follow it; at the
end the status becomes `completed`, `failed` (with the error) or `interrupted` (Ctrl-C, or SIGTERM after a checkpoint), with
`finished_at`. A resumed run goes back to `running` in the same row.

Every write is one short transaction through `Catalog.write()`: a dashboard reading the catalog
during a run keeps working.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog.db import Catalog, fetch_one
from catalog.versions import check_name
from corpus.errors import KalmixError
from corpus.schema import suggest

RUN_STATUSES: tuple[str, ...] = ("running", "completed", "failed", "interrupted")
MODEL_FOLDER = "model"


@dataclass(frozen=True)
class RunInfo:
    name: str
    kind: str
    mixture: str | None
    mixture_version: int | None
    base_model: str | None
    config: dict[str, Any]
    git_commit: str | None
    status: str
    path: Path
    pid: int | None
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict[str, Any]
    error: str | None

    @property
    def mixture_ref(self) -> str | None:
        return f"{self.mixture}@v{self.mixture_version}" if self.mixture else None

    @property
    def model_path(self) -> Path:
        """The exported sentence-transformers folder (exists once the run completed)."""
        return self.path / MODEL_FOLDER


_COLUMNS = (
    "name, kind, mixture, mixture_version, base_model, config, git_commit, status, path, pid, "
    "started_at, finished_at, summary, error"
)


def run_dir(cat: Catalog, name: str) -> Path:
    return cat.workspace.runs_dir / check_name(name, "run")


def _info(cat: Catalog, row: tuple) -> RunInfo:
    (
        name,
        kind,
        mixture,
        version,
        base,
        config,
        commit,
        status,
        path,
        pid,
        started,
        finished,
        summary,
        error,
    ) = row
    return RunInfo(
        name=name,
        kind=kind,
        mixture=mixture,
        mixture_version=version,
        base_model=base,
        config=json.loads(config) if config else {},
        git_commit=commit,
        status=status,
        path=cat.workspace.root / path,
        pid=pid,
        started_at=started,
        finished_at=finished,
        summary=json.loads(summary) if summary else {},
        error=error,
    )


def get_run(cat: Catalog, name: str) -> RunInfo | None:
    with cat.read() as con:
        row = fetch_one(con, f"SELECT {_COLUMNS} FROM runs WHERE name = ?", [name])
    return _info(cat, row) if row else None


def require_run(cat: Catalog, name: str) -> RunInfo:
    """The run called `name`, or an error that lists close names."""
    info = get_run(cat, name)
    if info is None:
        names = [r["name"] for r in cat.query("SELECT name FROM runs").to_pylist()]
        raise KalmixError(
            f"unknown run {name!r}{suggest(name, names)} (list them with the runs table)"
        )
    return info


def create_run(
    cat: Catalog,
    name: str,
    *,
    mixture: str | None,
    mixture_version: int | None,
    base_model: str,
    config: dict[str, Any] | None = None,
    git_commit: str | None = None,
    pid: int | None = None,
    kind: str = "train",
) -> RunInfo:
    """Insert a `running` row; a name already used is an error (resume it or pick another).

    `pid` is the process doing the run, this one unless said otherwise (the dashboard checks
    it is alive). A soup (kind `soup`) has no mixture of its own: its config names its parts.
    """
    path = run_dir(cat, name).relative_to(cat.workspace.root)
    with cat.write() as con:
        existing = fetch_one(con, "SELECT status FROM runs WHERE name = ?", [name])
        if existing:
            raise KalmixError(
                f"run {name!r} already exists (status {existing[0]}): continue it with --resume, "
                "or choose another --out-run"
            )
        con.execute(
            "INSERT INTO runs(name, kind, mixture, mixture_version, base_model, config, "
            "git_commit, status, path, pid) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
            [
                name,
                kind,
                mixture,
                mixture_version,
                base_model,
                json.dumps(config or {}, sort_keys=True, default=str),
                git_commit,
                str(path),
                os.getpid() if pid is None else pid,
            ],
        )
    return require_run(cat, name)


def restart_run(cat: Catalog, name: str, *, pid: int, git_commit: str | None) -> RunInfo:
    """Mark an existing run `running` again (resume); it keeps its config and start time."""
    info = require_run(cat, name)
    if info.status == "completed":
        raise KalmixError(f"run {name!r} already completed; start a new run with another --out-run")
    with cat.write() as con:
        con.execute(
            "UPDATE runs SET status = 'running', pid = ?, git_commit = ?, finished_at = NULL, "
            "error = NULL WHERE name = ?",
            [pid, git_commit, name],
        )
    return require_run(cat, name)


def update_run(
    cat: Catalog,
    name: str,
    *,
    status: str | None = None,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Refresh the summary and/or end the run; a final status also sets `finished_at`."""
    if status is not None and status not in RUN_STATUSES:
        raise KalmixError(f"unknown run status {status!r}; one of: {', '.join(RUN_STATUSES)}")
    sets, params = [], []
    if status is not None:
        sets.append("status = ?")
        params.append(status)
        if status != "running":
            sets.append("finished_at = now()")
    if summary is not None:
        sets.append("summary = ?")
        params.append(json.dumps(summary, sort_keys=True, default=str))
    if error is not None:
        sets.append("error = ?")
        params.append(error)
    if not sets:
        return
    with cat.write() as con:
        con.execute(f"UPDATE runs SET {', '.join(sets)} WHERE name = ?", [*params, name])


def list_runs(cat: Catalog) -> pa.Table:
    """Every run, newest first: its mixture reference, status, seconds so far (or in all), and
    config and summary as JSON text (what the dashboard's Runs page shows)."""
    return cat.query(
        """
        SELECT name, kind,
               CASE WHEN mixture IS NULL THEN NULL
                    ELSE mixture || '@v' || mixture_version END AS mixture,
               base_model, status, pid, started_at, finished_at,
               epoch(coalesce(finished_at, now()::TIMESTAMP) - started_at) AS seconds,
               path, config::VARCHAR AS config, summary::VARCHAR AS summary, error
        FROM runs ORDER BY started_at DESC, name
        """
    )
