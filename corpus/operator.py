"""The operator contract shared by `filters/` and `synth/`.

An operator is a plain function `table -> OpResult`: records in, records kept (possibly with new
columns), the rows it removed with a reason, and a small stats dict. It never touches the
catalog, so it runs unchanged on an in-memory table in a test, in a local process pool, or in
Ray Data's `map_batches`.

Removals are positional, never "drop every row with this id": two rows may share an id (exact
duplicates do), and the operator decides which one goes. When a table spans several datasets
(`--across`) it carries a `_dataset` column; operators keep it on kept rows and on removals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from corpus.schema import REMOVALS_SCHEMA

DATASET_COLUMN = "_dataset"


@dataclass
class OpResult:
    table: pa.Table
    removed: pa.Table  # id, reason, detail (JSON text) [, _dataset]
    stats: dict[str, Any] = field(default_factory=dict)


Operator = Callable[[pa.Table], OpResult]


def empty_removals(with_dataset: bool = False) -> pa.Table:
    schema = REMOVALS_SCHEMA
    if with_dataset:
        schema = schema.append(pa.field(DATASET_COLUMN, pa.string()))
    return schema.empty_table()


def split_by_mask(
    table: pa.Table,
    keep: pa.Array | list[bool],
    reasons: list[str | None],
    details: list[dict | None],
) -> tuple[pa.Table, pa.Table]:
    """Kept rows, and removal rows built from the rest (reason/detail per row; positional)."""
    keep_arr = pa.array(keep, pa.bool_())
    kept = table.filter(keep_arr)
    drop_idx = [i for i, k in enumerate(keep_arr.to_pylist()) if not k]
    removed = {
        "id": pc.take(table.column("id"), pa.array(drop_idx, pa.int64())),
        "reason": pa.array([reasons[i] for i in drop_idx], pa.string()),
        "detail": pa.array(
            [
                json.dumps(details[i], ensure_ascii=False) if details[i] is not None else None
                for i in drop_idx
            ],
            pa.string(),
        ),
    }
    if DATASET_COLUMN in table.column_names:
        removed[DATASET_COLUMN] = pc.take(
            table.column(DATASET_COLUMN), pa.array(drop_idx, pa.int64())
        )
    return kept, pa.table(removed)
