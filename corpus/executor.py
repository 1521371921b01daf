"""Executors: where an operator runs, named by the same three words in every command (defined
in `corpus.vocabulary`, which the command line imports without this module's Arrow).

`inline` runs the whole version in this process (an operator that needs every row at once);
`local` maps a row-local operator (language ID, embedding-free filters) over the version's
shards on a process pool, which scales with cores without any cluster; `ray` runs it on Ray
Data (with the `ray` extra), by the operator's own plan when it has one. All three implement
`Executor.run` and give the same rows and removals in the same order. Process pools here start
by "spawn" (`spawn_context`).
"""

from __future__ import annotations

import multiprocessing.context
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from corpus import storage
from corpus.errors import KalmixError
from corpus.operator import (
    DATASET_COLUMN,
    Operator,
    OpResult,
    Shard,
    empty_removals,
    removals_schema,
)
from corpus.vocabulary import check_executor

T = TypeVar("T")
R = TypeVar("R")


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (one of another user's counts); None or <= 0: no.

    For work named by its pid (a staging folder, a training run), to tell a live writer from
    one that died without cleaning up.
    """
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_workers() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


@contextmanager
def _entry_main_only() -> Iterator[None]:
    """While a worker is spawned, hide a `__main__` that is not the program's entry script.

    A spawned child re-runs the parent's `__main__` file (as `__mp_main__`) before it unpickles
    anything, so that functions defined there can be found. That is sound only for the script
    the interpreter was started with, which by Python's contract guards its work under
    `if __name__ == "__main__"`. Streamlit (the dashboard, and its `AppTest` under pytest)
    installs the page it runs as a fake `__main__` and never puts the old one back: every
    worker spawned afterwards would run the whole dashboard page on start, and die with it
    (`BrokenProcessPool: A process in the process pool was terminated abruptly`). Everything
    the pools here run lives in importable modules, so the child needs no `__main__` then.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    entry = bool(sys.argv and sys.argv[0]) and os.path.realpath(sys.argv[0])
    if (
        path is None
        or getattr(main, "__spec__", None) is not None
        or os.path.realpath(path) == entry
    ):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _SpawnProcess(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):  # noqa: N802 - multiprocessing's name
        with _entry_main_only():
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class _SpawnContext(multiprocessing.context.SpawnContext):
    Process = _SpawnProcess


def spawn_context() -> multiprocessing.context.SpawnContext:
    """The start method of every process pool here: "spawn" (no fork of a process that may hold
    threads, e.g. torch's), safe whatever module is installed as `__main__` (see
    `_entry_main_only`)."""
    return _SpawnContext()


def prefetch_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = 2, ahead: int = 4
) -> Iterator[R]:
    """`map(fn, items)` on a thread pool, in order, with at most `ahead` results in flight.

    For stages whose work runs in native code that releases the GIL (polars parsing, DuckDB
    hashing, Parquet encoding): two stages overlap on two cores while memory stays bounded.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


REASON, DETAIL = "_removal_reason", "_removal_detail"


def encode_result(result: OpResult) -> pa.Table:
    """One table for an `OpResult`: kept rows, then removal rows marked by `_removal_reason`.

    Ray Data's `map_batches` returns a single table per batch; this packs the kept records and
    the removals into it (removal rows carry only id, reason and detail) and `decode_result`
    splits them again on the driver.
    """
    kept = result.table.append_column(REASON, pa.nulls(result.table.num_rows, pa.string()))
    kept = kept.append_column(DETAIL, pa.nulls(result.table.num_rows, pa.string()))
    removed = pa.table(
        [result.removed.column(c) for c in ("id", "reason", "detail")],
        # the kept rows' own id field (`not null`), so the decoded table keeps its schema
        schema=pa.schema(
            [kept.schema.field("id"), kept.schema.field(REASON), kept.schema.field(DETAIL)]
        ),
    )
    return pa.concat_tables([kept, removed], promote_options="default")


def decode_result(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    is_removal = pc.is_valid(table.column(REASON))
    kept = table.filter(pc.invert(is_removal)).drop_columns([REASON, DETAIL])
    removed = table.filter(is_removal)
    removed = pa.table(
        [removed.column("id"), removed.column(REASON), removed.column(DETAIL)],
        schema=removals_schema(),
    )
    return kept, removed


# --- executors: where an operator runs ----------------------------------------------------------


class Executor(Protocol):
    """Runs an operator over a run's Parquet shards; the same rows and removals, in the same
    order, whichever executor it is (for an operator each one accepts)."""

    def run(self, op: Operator, shards: list[Shard]) -> OpResult: ...


def read_shards(shards: list[Shard]) -> pa.Table:
    """The shards as one table, with a `_dataset` column where they name their dataset."""
    parts = []
    for dataset, path in shards:
        table = storage.read_table(path)
        if dataset is not None:
            column = pa.array([dataset] * table.num_rows, pa.string())
            table = table.append_column(DATASET_COLUMN, column)
        parts.append(table)
    return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})


@dataclass(frozen=True)
class InlineExecutor:
    """The whole run in this process: for operators that look at all rows at once."""

    def run(self, op: Operator, shards: list[Shard]) -> OpResult:
        return op(read_shards(shards))


def _paths(shards: list[Shard]) -> list[str]:
    """The paths of a row-local run (one dataset: removals shard by shard carry no `_dataset`)."""
    if any(dataset is not None for dataset, _ in shards):
        raise KalmixError("a run across datasets goes inline or through an operator's Ray plan")
    return [path for _, path in shards]


def _joined(parts: list[tuple[pa.Table, pa.Table]], executor: str) -> OpResult:
    stats = {"executor": executor, "shards": len(parts)}
    if not parts:
        return OpResult(pa.table({}), empty_removals(), stats)
    table = pa.concat_tables([k for k, _ in parts], promote_options="default")
    return OpResult(table, pa.concat_tables([r for _, r in parts]), stats)


@dataclass
class _ShardTask:
    """Picklable: read one shard in a worker process and run the operator on it."""

    op: Operator

    def __call__(self, path: str) -> tuple[pa.Table, pa.Table]:
        return decode_result(encode_result(self.op(storage.read_table(path))))


@dataclass(frozen=True)
class LocalExecutor:
    """A row-local operator shard by shard on a process pool, results in input order (so
    output shards and removals are deterministic whatever the number of workers); an operator
    that needs every row at once runs its own out-of-core plan (`Operator.local_plan`)."""

    workers: int = 0  # 0 = one per core

    def run(self, op: Operator, shards: list[Shard]) -> OpResult:
        plan = op.local_plan()
        if plan is not None:
            return plan(self, shards)
        paths = _paths(shards)
        workers = min(self.workers or default_workers(), len(paths))
        task = _ShardTask(op)
        if workers <= 1:
            return _joined(list(map(task, paths)), "local")
        with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
            return _joined(list(pool.map(task, paths)), "local")


@dataclass
class _EncodedOperator:
    op: Operator

    def __call__(self, table: pa.Table) -> pa.Table:
        return encode_result(self.op(table))


@dataclass
class RayExecutor:
    """Runs an operator on Ray Data: its own plan (`Operator.ray_plan`) when it has one, else as
    `map_batches` over the Parquet shards (a row-local operator).

    `paths` may be local or any pyarrow/fsspec URI (s3://...). `address` None starts (or joins)
    a local Ray; "auto" or "ray://host:10001" joins a cluster. Output batches stream back to
    the driver in input order (`preserve_order`), so results match the local executor exactly.
    """

    address: str | None = None
    num_cpus: int | None = None
    batch_rows: int = 4096

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise KalmixError("the Ray executor needs Ray: pip install 'kalmix[ray]'") from None
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                num_cpus=self.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
            )
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        return ray

    def run(self, op: Operator, shards: list[Shard]) -> OpResult:
        plan = op.ray_plan()
        if plan is not None:
            return plan(self, shards)
        ray = self._ray()
        files, filesystem = storage.ray_paths(_paths(shards))
        if not files:
            return _joined([], "ray")
        ds = ray.data.read_parquet(files, filesystem=filesystem).map_batches(
            _EncodedOperator(op), batch_format="pyarrow", batch_size=self.batch_rows
        )
        batches = ds.iter_batches(batch_format="pyarrow", batch_size=None)
        return _joined([decode_result(batch) for batch in batches], "ray")


def make_executor(name: str, *, workers: int = 0, address: str | None = None) -> Executor:
    """The executor an `--executor` word names (checked), with its options."""
    kind = check_executor(name)
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address=address)
    return InlineExecutor()
