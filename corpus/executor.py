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
