"""Executors: map a picklable function over shards, locally or (with the `ray` extra) on Ray.

The local executor is a process pool: work that is row-local (language ID, embedding-free
filters) scales with cores without any cluster. Results come back in input order so output
shards and removals are deterministic whatever the number of workers.
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
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

T = TypeVar("T")
R = TypeVar("R")


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


@dataclass
class LocalExecutor:
    workers: int = 0  # 0 = one per core

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        workers = min(self.workers or default_workers(), len(items))
        if workers <= 1:
            yield from map(fn, items)
            return
        with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
            yield from pool.map(fn, items)


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


def encode_result(result) -> pa.Table:
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
        {
            "id": removed.column("id"),
            "reason": removed.column(REASON),
            "detail": removed.column(DETAIL),
        }
    )
    return kept, removed


@dataclass
class _EncodedOperator:
    op: Callable

    def __call__(self, table: pa.Table) -> pa.Table:
        return encode_result(self.op(table))


@dataclass
class RayExecutor:
    """Runs a row-local operator as Ray Data `map_batches` over Parquet shards.

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
            from corpus.errors import KalmixError

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

    def map_operator(self, op: Callable, paths: list[str]) -> Iterator[tuple[pa.Table, pa.Table]]:
        from corpus.storage import ray_paths

        ray = self._ray()
        files, filesystem = ray_paths(paths)
        ds = ray.data.read_parquet(files, filesystem=filesystem).map_batches(
            _EncodedOperator(op), batch_format="pyarrow", batch_size=self.batch_rows
        )
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            yield decode_result(batch)
