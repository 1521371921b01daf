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
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


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
