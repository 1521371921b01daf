"""`Dedup` out of core: the local executor's plan (`kalmix dedup --executor local`).

The same result as the operator on the whole table in memory (`Dedup.__call__`, which
`--executor inline` runs), row for row and removal for removal, with memory bounded by the
`--memory-limit` rather than by the corpus:

1. Shard pass, on a process pool (every core): each piece (one row group of one shard, read in
   batches of `batch_docs` rows, only the text fields) gets, per row, a 128-bit hash of its
   normalised text (the exact pass's key), its MinHash signature (`corpus.minhash`) and its
   LSH band keys; the three go to Parquet files in a temporary folder under the workspace
   cache (`work_dir`), removed when the run ends (a killed run registers nothing; the next run
   removes its folder).
2. Exact pass: DuckDB (with half the `memory_limit`, spilling to that folder) finds the rows whose hash
   is shared; only those rows are read back and `filters.exact.exact_dedup` runs on them, so
   texts are compared as strings (a hash collision merges nothing) and the keeper rule sees
   every member of each group, as in memory.
3. Banding: a DuckDB group-by over the band keys of the exact pass's survivors, band by band,
   keeps the buckets of two or more rows; `corpus.minhash.bucket_pairs` turns them into candidate pairs.
4. Verification, clustering and the keeper rule (`filters.dedup.resolve_pairs`) run on the rows
   of candidate pairs only, their signatures and fields read back piece by piece.
5. The kept rows are the input shards less the removed rows (`corpus.operator.KeptRows`),
   streamed into the new version by `kalmix.pipeline`.

What stays in memory for the whole run: the sorted row numbers removed and the rows in
candidate pairs (a few bytes per document), never the texts or the signatures of the corpus.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from corpus import storage
from corpus.errors import KalmixError
from corpus.executor import default_workers, pid_alive, spawn_context
from corpus.minhash import MinHasher, band_keys, bucket_pairs, lsh_params, unique_pairs
from corpus.operator import (
    KeptRows,
    OpResult,
    Piece,
    Shard,
    empty_removals,
    pieces,
    read_piece,
    split_rows,
)
from corpus.text import FIELD_SEPARATOR, normalize, record_text
from filters.clusters import duplicate_details
from filters.exact import exact_dedup

if TYPE_CHECKING:
    from filters.dedup import DedupConfig

ROW = "_row"
DOC_BYTES = 16 * 1024  # working memory per document of a signature batch (texts, shingles)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
}


def memory_bytes(limit: str) -> int:
    """Bytes of a limit such as "4GB", "512MB" or "2GiB" (DuckDB's own words)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", limit or "")
    unit = match and match.group(2).upper()
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise KalmixError(f"--memory-limit must be a size such as 4GB or 512MB, got {limit!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def _sig_bytes(sig: np.ndarray) -> pa.Array:
    from filters.dedup import _sig_column

    return _sig_column(sig)


@dataclass(frozen=True)
class _SignPiece:
    """Worker task: one piece's exact keys, signatures and band keys, to Parquet in `folder`.

    Returns the corpus rows of the piece whose text has no shingle (the empty signature)."""

    fields: tuple[str, ...]
    hasher: MinHasher
    bands: int
    band_rows: int
    folder: str
    batch_rows: int

    def __call__(self, piece: Piece) -> np.ndarray:
        writers: dict[str, pq.ParquetWriter] = {}
        without: list[np.ndarray] = []
        start = piece.offset
        try:
            for table in read_piece(piece, list(self.fields), self.batch_rows):
                rows = np.arange(start, start + table.num_rows, dtype=np.int64)
                start += table.num_rows
                for name, part in self._parts(table, rows, without):
                    if name not in writers:
                        path = f"{self.folder}/{name}-{piece.index:06d}.parquet"
                        writers[name] = pq.ParquetWriter(path, part.schema, compression="lz4")
                    writers[name].write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        return np.concatenate(without) if without else np.zeros(0, np.int64)

    def _parts(
        self, table: pa.Table, rows: np.ndarray, without: list[np.ndarray]
    ) -> Iterator[tuple[str, pa.Table]]:
        norm = pl.Series(normalize(record_text(table, self.fields, separator=FIELD_SEPARATOR)))
        filled = (norm != "").to_numpy()
        yield (
            "exact",
            pa.table(
                {
                    "doc": rows[filled],
                    "h1": norm.filter(filled).hash(seed=0).to_arrow(),
                    "h2": norm.filter(filled).hash(seed=0x9E3779B9).to_arrow(),
                }
            ),
        )
        sig = self.hasher.signatures(record_text(table, self.fields).to_arrow())
        yield "sig", pa.table({"sig": _sig_bytes(sig)})
        has_text = (sig != np.uint32(0xFFFFFFFF)).any(axis=1)
        without.append(rows[~has_text])
        sig, docs = sig[has_text], rows[has_text]
        for b in range(self.bands):
            yield f"band{b:03d}", pa.table({"key": band_keys(sig, b, self.band_rows), "doc": docs})


def _map(fn: Callable[[Piece], np.ndarray], items: list[Piece], workers: int) -> Iterator:
    if workers <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
        yield from pool.map(fn, items)


def _take(
    parts: list[Piece], rows: np.ndarray, columns: list[str], batch_rows: int
) -> pa.Table | None:
    """The given corpus rows (sorted) of `columns` (plus `_dataset`), in order; None if none."""
    found = []
    for piece in parts:
        start = piece.offset
        if np.searchsorted(rows, start) == np.searchsorted(rows, start + piece.rows):
            continue
        for table in read_piece(piece, columns, batch_rows):
            lo, hi = np.searchsorted(rows, [start, start + table.num_rows])
            if lo < hi:
                found.append(table.take(pa.array(rows[lo:hi] - start)))
            start += table.num_rows
    pa.default_memory_pool().release_unused()  # the batches read are garbage now
    return pa.concat_tables(found, promote_options="permissive") if found else None


def _signatures(folder: Path, parts: list[Piece], rows: np.ndarray, num_perm: int) -> np.ndarray:
    from filters.dedup import _sig_matrix

    out = np.empty((rows.size, num_perm), dtype=np.uint32)
    done = 0
    for piece in parts:
        lo, hi = np.searchsorted(rows, [piece.offset, piece.offset + piece.rows])
        if lo < hi:
            column = pq.read_table(folder / f"sig-{piece.index:06d}.parquet").column("sig")
            taken = column.take(pa.array(rows[lo:hi] - piece.offset))
            out[done : done + hi - lo] = _sig_matrix(taken, num_perm)
            done += hi - lo
    return out


def _work_folder(work_dir: str | None) -> Path:
    """A fresh folder for this run's files; folders of runs whose process is gone are removed."""
    root = Path(work_dir) if work_dir else Path(tempfile.gettempdir()) / "kalmix-dedup"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("dedup-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = root / f"dedup-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def _duckdb(folder: Path, memory: int, workers: int):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{max(memory // 2 // 2**20, 64)}MiB'")  # half: Python's too
    con.execute(f"SET temp_directory = '{folder / 'spill'}'")
    con.execute(f"SET threads = {workers}")
    con.execute("SET preserve_insertion_order = false")
    return con


def dedup_out_of_core(
    config: DedupConfig,
    shards: list[Shard],
    on_signed: Callable[[int, int], None] | None = None,
) -> OpResult:
    """`Dedup(config)` on the concatenated shards, out of core (see the module docstring)."""
    from filters.dedup import REASON, resolve_pairs

    start = time.perf_counter()
    first = storage.read_schema(shards[0][1])
    record_text(first.empty_table(), config.fields)  # a bad --fields fails here
    parts = pieces(shards)
    n = sum(p.rows for p in parts)
    workers = min(config.workers or default_workers(), max(len(parts), 1))
    memory = memory_bytes(config.memory_limit)
    batch = int(min(config.batch_docs, max(256, memory // (2 * workers * DOC_BYTES))))
    bands, band_rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    across = shards[0][0] is not None
    columns = ["id", *config.fields, config.priority_column]
    folder = _work_folder(config.work_dir)
    try:
        task = _SignPiece(
            config.fields, MinHasher(config.minhash), bands, band_rows, str(folder), batch
        )
        without = []
        for piece, rows in zip(parts, _map(task, parts, workers), strict=True):
            without.append(rows)
            if on_signed is not None:
                on_signed(piece.rows, n)
        stats: dict = {"rows": n, "signature_seconds": round(time.perf_counter() - start, 3)}
        con = _duckdb(folder, memory, workers)
        exact_files = f"read_parquet('{folder}/exact-*.parquet')"
        shared = con.sql(
            f"""WITH e AS (SELECT * FROM {exact_files}),
            g AS (SELECT h1, h2 FROM e GROUP BY h1, h2 HAVING count(*) > 1)
            SELECT doc FROM e SEMI JOIN g USING (h1, h2) ORDER BY doc"""
        ).fetchnumpy()["doc"]
        removal_schema = empty_removals(across).schema
        exact_removed, exact_rows = removal_schema.empty_table(), np.zeros(0, np.int64)
        if len(shared):
            shared = np.asarray(shared, dtype=np.int64)
            members = _take(parts, shared, columns, batch).append_column(ROW, pa.array(shared))
            exact = exact_dedup(members, config.fields, config.rule)
            exact_removed = exact.removed
            exact_rows = np.setdiff1d(shared, exact.table.column(ROW).to_numpy())
        stats["exact_duplicates"] = len(exact_rows)
        stats["without_text"] = int(
            np.setdiff1d(np.concatenate(without), exact_rows, assume_unique=True).size
        )
        stats["lsh_seconds"] = 0.0
        if not config.near:
            return _finish(parts, exact_rows, exact_removed, stats, start, batch, removal_schema)
        lsh_start = time.perf_counter()
        con.register("gone", pa.table({"doc": exact_rows}))
        found = []
        for band in range(bands):  # one band at a time, as `corpus.minhash.candidate_pairs`
            bucketed = con.sql(
                f"""WITH b AS (SELECT key, doc FROM read_parquet('{folder}/band{band:03d}-*.parquet')
                    ANTI JOIN gone USING (doc)),
                m AS (SELECT key FROM b GROUP BY key HAVING count(*) > 1)
                SELECT {band}::INTEGER AS band, key, doc AS row FROM b SEMI JOIN m USING (key)"""
            ).to_arrow_table()
            frame = pl.from_arrow(bucketed).cast(
                {"band": pl.Int32, "key": pl.UInt64, "row": pl.Int64}
            )
            found.append(bucket_pairs(frame))
        con.close()
        left, right = unique_pairs(found)
        stats["lsh_seconds"] = round(time.perf_counter() - lsh_start, 3)
        involved = np.unique(np.concatenate([left, right]))
        subset = _take(parts, involved, columns, batch)
        if subset is None:
            subset = pa.table({"id": pa.array([], pa.string())})
        sig = _signatures(folder, parts, involved, config.num_perm)
        near = resolve_pairs(
            subset, sig, np.searchsorted(involved, left), np.searchsorted(involved, right), config
        )
        stats.update(near.stats)
        near_removed = removal_schema.empty_table()
        if subset.num_rows:
            details = duplicate_details(subset, near.keepers, near.jaccard)
            _, near_removed = split_rows(subset, near.keepers.keep, REASON, details)
        gone = np.concatenate([exact_rows, involved[~near.keepers.keep]])
        removed = pa.concat_tables(
            [exact_removed.cast(removal_schema), near_removed.cast(removal_schema)]
        )
        return _finish(parts, gone, removed, stats, start, batch, removal_schema)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _finish(parts, gone, removed, stats, start, batch, removal_schema) -> OpResult:
    stats["seconds"] = round(time.perf_counter() - start, 3)
    stats["executor"] = "local"
    kept = KeptRows(parts, np.sort(gone), max(batch, 65536))
    return OpResult(kept, removed.cast(removal_schema), stats)
