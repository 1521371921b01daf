"""Parquet shard writer: fixed-size shards, zstd, one schema per folder.

It writes into a folder it is given (a catalog staging folder, local or on a store); atomicity
comes from the catalog renaming that folder, so a writer killed mid-shard leaves only a staging
folder.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from corpus import storage
from corpus.schema import RECORD_SCHEMA
from corpus.storage import StorePath

# Dictionary encoding pays off only for columns with few distinct values; trying it on the
# text columns costs write time and then falls back to plain encoding anyway.
_DICTIONARY_COLUMNS = ["task_type", "category", "label", "language", "source"]


class ShardWriter:
    def __init__(self, folder: StorePath, rows_per_shard: int = 500_000, prefix: str = "part"):
        self.folder = folder
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.rows = 0
        self.files: list[StorePath] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = 0
        self._schema: pa.Schema | None = None

    def _open(self, schema: pa.Schema) -> None:
        path = storage.join(self.folder, f"{self.prefix}-{len(self.files):05d}.parquet")
        self._writer = storage.parquet_writer(
            path,
            schema,
            compression="zstd",
            use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in schema.names],
        )
        self.files.append(path)
        self._in_shard = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self._schema is None:
            self._schema = table.schema
        elif table.schema != self._schema:
            table = table.select(self._schema.names).cast(self._schema)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._in_shard >= self.rows_per_shard:
                self._close_shard()
                self._open(self._schema)
            take = min(self.rows_per_shard - self._in_shard, table.num_rows - offset)
            self._writer.write_table(table.slice(offset, take))
            self._in_shard += take
            offset += take
        self.rows += table.num_rows

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[StorePath]:
        """Finish; an empty result still gets one zero-row shard so the schema is kept."""
        if not self.files:
            self._open(self._schema or RECORD_SCHEMA)
        self._close_shard()
        return self.files

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._close_shard()


def write_table(
    folder: StorePath, table: pa.Table, rows_per_shard: int = 500_000
) -> list[StorePath]:
    with ShardWriter(folder, rows_per_shard) as writer:
        writer.write(table)
        return writer.close()
