"""The operator contract shared by `filters/` and `synth/`, and the one way to build removals.

An operator (`Operator`) is called on a table and returns an `OpResult`: records in, records kept
(possibly with new columns), the rows it removed with a reason, and a small stats dict. It says
what it was run with (`params()`, what the catalog records), and it never touches the catalog, so
it runs unchanged on an in-memory table in a test, on a process pool shard by shard, or in Ray
Data's `map_batches`. That suits a row-local operator; one that needs every row at once (dedup)
brings its own plan for Ray (`ray_plan()`), and the executors (`corpus.executor`) run it.

Removals are positional, never "drop every row with this id": two rows may share an id (exact
duplicates do), and the operator decides which one goes. When a table spans several datasets
(`--across`) it carries a `_dataset` column; operators keep it on kept rows and on removals.
Every removal table has `REMOVALS_SCHEMA` (plus `_dataset`) and is built by `removal_table`; a
duplicate's detail names the row it duplicates as `dup_of`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpus import storage
from corpus.schema import REMOVALS_SCHEMA

if TYPE_CHECKING:
    from corpus.executor import LocalExecutor, RayExecutor

DATASET_COLUMN = "_dataset"

# One Parquet shard of a run: (its dataset when the run spans several, else None; path or URI).
Shard = tuple[str | None, str]


@dataclass(frozen=True)
class Piece:
    """One row group of one shard of a run: the unit an out-of-core plan reads and hands to a
    worker. `offset` is the corpus row number of its first row."""

    index: int
    dataset: str | None
    path: str
    row_group: int
    offset: int
    rows: int


def pieces(shards: list[Shard]) -> list[Piece]:
    """Every row group of the shards, in corpus order."""
    out: list[Piece] = []
    offset = 0
    for dataset, path in shards:
        for group, rows in enumerate(storage.row_groups(path)):
            out.append(Piece(len(out), dataset, path, group, offset, rows))
            offset += rows
    return out


def read_piece(
    piece: Piece, columns: list[str] | None = None, batch_rows: int = 65536
) -> Iterator[pa.Table]:
    """A piece's rows (the `columns` it has, None: all) in batches, with a `_dataset` column
    when its shard names its dataset."""
    for table in storage.iter_row_group(piece.path, piece.row_group, columns, batch_rows):
        if piece.dataset is not None:
            column = pa.array([piece.dataset] * table.num_rows, pa.string())
            table = table.append_column(DATASET_COLUMN, column)
        yield table


@dataclass(frozen=True)
class KeptRows:
    """The rows an out-of-core plan kept, left where they are: its pieces less the corpus rows
    `gone` (sorted), streamed piece by piece when the new version is written."""

    pieces: list[Piece]
    gone: np.ndarray
    batch_rows: int = 65536

    @property
    def num_rows(self) -> int:
        return sum(p.rows for p in self.pieces) - len(self.gone)

    def batches(self, dataset: str | None = None) -> Iterator[pa.Table]:
        """Kept rows in order, without `_dataset`; only `dataset`'s shards when given."""
        for piece in self.pieces:
            if dataset is not None and piece.dataset != dataset:
                continue
            start = piece.offset
            for table in storage.iter_row_group(piece.path, piece.row_group, None, self.batch_rows):
                yield table.filter(self._keep(start, table.num_rows))
                start += table.num_rows

    def _keep(self, start: int, n: int) -> pa.Array:
        lo, hi = np.searchsorted(self.gone, [start, start + n])
        keep = np.ones(n, dtype=bool)
        keep[self.gone[lo:hi] - start] = False
        return pa.array(keep)

    def read(self) -> pa.Table:
        """All kept rows as one table (with `_dataset` across datasets): for small runs."""
        parts = [
            table.filter(self._keep(piece.offset, piece.rows))
            for piece in self.pieces
            for table in read_piece(piece, None, max(piece.rows, 1))
        ]
        return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})


@dataclass
class OpResult:
    table: pa.Table | KeptRows  # KeptRows: from an out-of-core plan (`Operator.local_plan`)
    removed: pa.Table  # id, reason, detail (JSON text) [, _dataset]
    stats: dict[str, Any] = field(default_factory=dict)


# How an operator that needs every row at once runs on Ray Data: the executor and the shards in
# corpus order in, the same result as calling the operator on their concatenation out.
RayPlan = Callable[["RayExecutor", list[Shard]], OpResult]
# The same on this machine, out of core (dedup): its kept rows come back as `KeptRows`.
LocalPlan = Callable[["LocalExecutor", list[Shard]], OpResult]


class Operator(Protocol):
    """`table -> OpResult`, with the parameters the catalog records and an optional Ray plan.

    Operators subclass it to inherit `ray_plan`'s default (no plan: the operator is row-local,
    and Ray maps it over the shards as it is).
    """

    def __call__(self, table: pa.Table) -> OpResult: ...

    def params(self) -> dict[str, Any]:
        """What decides the output, as the catalog records it with the new version."""
        ...

    def ray_plan(self) -> RayPlan | None:
        """The plan for a whole run on Ray Data, or None for a row-local operator."""
        return None

    def local_plan(self) -> LocalPlan | None:
        """The local executor's plan for a whole run, or None: shard by shard on the pool."""
        return None


def removals_schema(with_dataset: bool = False) -> pa.Schema:
    if with_dataset:
        return REMOVALS_SCHEMA.append(pa.field(DATASET_COLUMN, pa.string()))
    return REMOVALS_SCHEMA


def empty_removals(with_dataset: bool = False) -> pa.Table:
    return removals_schema(with_dataset).empty_table()


def removal_table(
    ids: pa.Array | pa.ChunkedArray | Sequence[str],
    reasons: str | Sequence[str],
    details: Sequence[dict | None],
    datasets: pa.Array | pa.ChunkedArray | None = None,
) -> pa.Table:
    """The one builder of removal rows: id, reason (one for all, or one each), detail as JSON
    text (None stays null), and `_dataset` when given."""
    reasons = [reasons] * len(details) if isinstance(reasons, str) else list(reasons)
    columns = [
        ids,
        pa.array(reasons, pa.string()),
        pa.array(
            [None if d is None else json.dumps(d, ensure_ascii=False) for d in details],
            pa.string(),
        ),
    ]
    if datasets is not None:
        columns.append(datasets)
    return pa.table(columns, schema=removals_schema(datasets is not None))


def removal_rows(
    table: pa.Table, rows: np.ndarray, reason: str | Sequence[str], details: Sequence[dict | None]
) -> pa.Table:
    """Removal rows for the given row indices of `table` (keeping its `_dataset`).

    Only removed rows are touched in Python (for their JSON detail); kept rows never are.
    """
    idx = pa.array(np.asarray(rows, dtype=np.int64))
    datasets = None
    if DATASET_COLUMN in table.column_names:
        datasets = pc.take(table.column(DATASET_COLUMN), idx)
    return removal_table(pc.take(table.column("id"), idx), reason, details, datasets)


def split_rows(
    table: pa.Table,
    keep: np.ndarray | Sequence[bool],
    reason: str | Sequence[str],
    details: Sequence[dict | None],
) -> tuple[pa.Table, pa.Table]:
    """Kept rows (input order, every column kept) and removal rows for the others; `reason`
    and `details` are given for the removed rows only."""
    keep = np.asarray(keep, dtype=bool)
    dropped = np.flatnonzero(~keep)
    if len(details) != dropped.size:
        raise ValueError(f"{len(details)} details for {dropped.size} removed rows")
    return table.filter(pa.array(keep)), removal_rows(table, dropped, reason, details)


def split_by_mask(
    table: pa.Table,
    keep: pa.Array | pa.ChunkedArray | Sequence[bool],
    reasons: Sequence[str | None],
    details: Sequence[dict | None],
) -> tuple[pa.Table, pa.Table]:
    """`split_rows` for operators that decide row by row: a reason and detail for every row,
    read only where the row is not kept."""
    if isinstance(keep, pa.Array | pa.ChunkedArray):
        keep = keep.to_pylist()
    keep = np.asarray(keep, dtype=bool)
    dropped = np.flatnonzero(~keep).tolist()
    return split_rows(table, keep, [reasons[i] for i in dropped], [details[i] for i in dropped])


def count_reasons(removed: pa.Table) -> dict[str, int]:
    """Removals per reason, in the order reasons first appear."""
    return dict(Counter(removed.column("reason").to_pylist()))
