"""Executors: map a picklable function over shards, locally or (with the `ray` extra) on Ray.

The local executor is a process pool: work that is row-local (language ID, embedding-free
filters) scales with cores without any cluster. Results come back in input order so output
shards and removals are deterministic whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
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


@dataclass
class LocalExecutor:
    workers: int = 0  # 0 = one per core

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        workers = min(self.workers or default_workers(), len(items))
        if workers <= 1:
            yield from map(fn, items)
            return
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
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
        {
            "id": result.removed.column("id"),
            REASON: result.removed.column("reason"),
            DETAIL: result.removed.column("detail"),
        }
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
        ray = self._ray()
        ds = ray.data.read_parquet(paths).map_batches(
            _EncodedOperator(op), batch_format="pyarrow", batch_size=self.batch_rows
        )
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            yield decode_result(batch)
