"""Glue between operators and the catalog: read a version, run an operator, register the result.

This is the only place that knows both sides, which keeps `filters/` and `synth/` free of the
catalog (datatrove-style steps: one step, one job, stats out). Every step returns a
`StepReport` that the CLI prints: rows in, rows out, removals by reason, seconds.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from catalog import versions
from catalog.db import Catalog
from catalog.versions import Commit, Staged, VersionInfo, VersionRef
from corpus.errors import KalmixError
from corpus.executor import check_executor, make_executor
from corpus.operator import DATASET_COLUMN, KeptRows, Operator, OpResult, count_reasons
from corpus.writer import ShardWriter, write_table


@dataclass
class StepReport:
    operation: str
    sources: list[VersionRef]
    results: list[VersionRef]
    rows_in: int
    rows_out: int
    removed_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.removed_by_reason.items())) or "none"
        made = ", ".join(map(str, self.results)) or "no new version (nothing changed)"
        return (
            f"{self.operation}: {', '.join(map(str, self.sources))} -> {made}: rows {self.rows_in} -> "
            f"{self.rows_out}; removed: {reasons}; {self.seconds:.1f}s"
        )


def run_operator(
    source: VersionInfo,
    op: Operator,
    executor: str = "inline",
    workers: int = 0,
    address: str | None = None,
) -> OpResult:
    """Apply `op` to a version on the executor named `executor` (`corpus.executor`): the
    whole table in this process (`inline`, needed by operators that look at all rows at
    once), or shard by shard on a process pool (`local`) or Ray Data (`ray`) for row-local
    operators, with the same rows and removals in the same order. On Ray an operator with a
    global step (dedup) runs its own plan (`Operator.ray_plan`)."""
    runner = make_executor(executor, workers=workers, address=address)
    return runner.run(op, [(None, str(f)) for f in source.files])


def apply(
    cat: Catalog,
    source: VersionInfo,
    op: Operator,
    *,
    operation: str,
    params: dict[str, Any] | None = None,
    always_commit: bool = True,
    executor: str = "inline",
    workers: int = 0,
    address: str | None = None,
) -> StepReport:
    """Run `op` over a version and register its output as the next version, with `params`
    (default: `op.params()`) as the recorded parameters."""
    start = time.perf_counter()
    if source.rows == 0:
        raise KalmixError(f"{source.ref} is empty: nothing to {operation}")
    result = run_operator(source, op, executor, workers, address)
    table = result.table
    report = StepReport(
        operation,
        [source.ref],
        [],
        source.rows,
        table.num_rows,
        count_reasons(result.removed),
        stats=result.stats,
    )
    if always_commit or result.removed.num_rows:
        with versions.staging(cat, source.dataset) as staged:
            _write(staged, result.table)
            report.results = versions.commit(
                cat,
                Commit(
                    source.dataset,
                    staged,
                    operation,
                    op.params() if params is None else params,
                    parent=source.ref,
                    stats={"operator": result.stats},
                    removals=_without_dataset(result.removed),
                ),
            )
    report.seconds = time.perf_counter() - start
    return report


def _write(staged: Staged, kept: pa.Table | KeptRows, dataset: str | None = None) -> None:
    """Write an operator's kept rows (of `dataset` only, when given) into a staging folder: a
    table as it is, the `KeptRows` of an out-of-core plan streamed batch by batch."""
    if isinstance(kept, pa.Table):
        if dataset is not None:
            kept = kept.filter(pc.equal(kept.column(DATASET_COLUMN), dataset))
        write_table(staged.path, _without_dataset(kept))
        return
    with ShardWriter(staged.path) as writer:
        for batch in kept.batches(dataset):
            writer.write(batch)
        writer.close()


def _without_dataset(table: pa.Table) -> pa.Table:
    """The table without the `_dataset` column an operator across datasets works with."""
    return table.drop_columns([c for c in (DATASET_COLUMN,) if c in table.column_names])


def apply_across(
    cat: Catalog,
    sources: list[VersionInfo],
    op: Operator,
    *,
    operation: str,
    params: dict[str, Any] | None = None,
    executor: str = "inline",
    address: str | None = None,
) -> StepReport:
    """Run `op` over several versions at once; one new version per dataset that lost rows.

    All the new versions are registered in one transaction: all or none. The rows carry their
    dataset (`_dataset`), so this runs inline, or by the operator's own plan locally
    (`Operator.local_plan`) or on Ray (`Operator.ray_plan`). `params` defaults to `op.params()`.
    """
    if not sources:
        raise KalmixError(f"no datasets selected for {operation}")
    start = time.perf_counter()
    rows_in = sum(info.rows for info in sources)
    if rows_in == 0:
        raise KalmixError(f"the selected datasets are empty: nothing to {operation}")
    kind = check_executor(executor)
    if (kind == "local" and op.local_plan() is None) or (kind == "ray" and op.ray_plan() is None):
        raise KalmixError(
            f"{operation} across datasets runs inline or by its own plan, not {executor!r}"
        )
    shards = [(info.dataset, str(f)) for info in sources for f in info.files]
    result = make_executor(executor, address=address).run(op, shards)
    params = op.params() if params is None else params
    report = StepReport(
        operation,
        [s.ref for s in sources],
        [],
        rows_in,
        result.table.num_rows,
        count_reasons(result.removed),
        stats=result.stats,
    )
    # Each dataset's rows are written as soon as they are split off (one copy at a time, not
    # all of them), then every version is registered in one transaction.
    with ExitStack() as stack:
        commits = []
        for info in sources:
            lost = result.removed.filter(
                pc.equal(result.removed.column(DATASET_COLUMN), info.dataset)
            )
            if lost.num_rows == 0:
                continue
            staged = stack.enter_context(versions.staging(cat, info.dataset))
            _write(staged, result.table, info.dataset)
            commits.append(
                Commit(
                    info.dataset,
                    staged,
                    operation,
                    {**params, "across": [str(s.ref) for s in sources]},
                    parent=info.ref,
                    stats={"operator": result.stats},
                    removals=lost.drop_columns([DATASET_COLUMN]),
                )
            )
        if commits:
            report.results = versions.commit(cat, *commits)
    report.seconds = time.perf_counter() - start
    return report


def select_versions(cat: Catalog, where: str) -> list[VersionInfo]:
    """Latest versions of the datasets a `WHERE` over `datasets_view` selects (read-only)."""
    from catalog.queries import select_datasets

    return [versions.resolve(cat, name) for name in select_datasets(cat, where)]
