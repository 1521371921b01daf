"""The task taxonomy shipped with the package (`taxonomy/categories.csv`).

It seeds the `categories` table of every new workspace: 100+ task categories in the KaLM
spread, each with a task type, domain, languages and the default query-side instruction the
trainer uses when a record carries none.
"""

from __future__ import annotations

from importlib import resources

import pyarrow as pa
import pyarrow.csv as pacsv

from corpus.schema import TASK_TYPES

COLUMNS = ("name", "task_type", "domain", "languages", "description", "instruction")


def load_taxonomy() -> pa.Table:
    with resources.files("catalog").joinpath("taxonomy/categories.csv").open("rb") as f:
        table = pacsv.read_csv(
            f, convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS})
        )
    bad = set(table.column("task_type").to_pylist()) - set(TASK_TYPES)
    if bad:
        raise ValueError(f"taxonomy has unknown task types {sorted(bad)}")
    return table.select(list(COLUMNS))
