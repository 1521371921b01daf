"""Reading a mixture version back: its rows dataset by dataset (what the trainer streams), or
materialised as shuffled training shards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from catalog import versions
from catalog.db import Catalog
from catalog.mixtures.spec import ManifestEntry, MixtureRef, MixtureVersion, Progress
from catalog.mixtures.store import canonical, resolve_mixture, seeded_rng
from catalog.versions import VersionRef
from corpus import storage
from corpus.errors import KalmixError
from corpus.operator import DATASET_COLUMN
from corpus.schema import RECORD_FIELDS, RECORD_SCHEMA
from corpus.storage import StorePath

SHARD_SCHEMA = RECORD_SCHEMA.append(pa.field(DATASET_COLUMN, pa.string(), nullable=False))
DECODE_ROWS = 65_536  # rows decoded at a time when reading sampled rows back


def _fill_instruction(table: pa.Table, entry: ManifestEntry, override: bool) -> pa.Table:
    if "instruction" not in table.column_names or entry.instruction is None:
        return table
    i = table.column_names.index("instruction")
    column = table.column(i)
    if override:
        column = pa.repeat(pa.scalar(entry.instruction, pa.string()), table.num_rows)
    else:
        column = pc.fill_null(column, entry.instruction)
    return table.set_column(i, table.schema.field(i), column)


def _take_rows(
    files: list[Path],
    file_idx: np.ndarray,
    row_idx: np.ndarray,
    columns: list[str] | None,
    batch_rows: int,
) -> Iterator[pa.Table]:
    """Tables of the rows at sorted (file, row) positions, in that order, batch_rows at a time.

    Only the row groups that hold wanted rows are decoded, DECODE_ROWS at a time, so memory
    stays at about one decoded chunk plus one output batch whatever the dataset's size.
    """
    pending: list[pa.Table] = []
    held = 0
    cuts = np.flatnonzero(np.diff(file_idx)) + 1
    for seg_start, seg_end in zip(
        [0, *cuts.tolist()], [*cuts.tolist(), len(file_idx)], strict=True
    ):
        rows = row_idx[seg_start:seg_end]
        pf = pq.ParquetFile(storage.open_input(files[int(file_idx[seg_start])]))
        offset = 0
        for rg in range(pf.num_row_groups):
            size = pf.metadata.row_group(rg).num_rows
            lo, hi = np.searchsorted(rows, [offset, offset + size])
            if hi > lo:
                start = offset
                for batch in pf.iter_batches(
                    batch_size=max(batch_rows, DECODE_ROWS), row_groups=[rg], columns=columns
                ):
                    a, b = np.searchsorted(rows, [start, start + batch.num_rows])
                    if b > a:
                        pending.append(pa.Table.from_batches([batch]).take(rows[a:b] - start))
                        held += int(b - a)
                    start += batch.num_rows
                    while held >= batch_rows:
                        table = pa.concat_tables(pending, promote_options="permissive")
                        yield table.slice(0, batch_rows).combine_chunks()
                        rest = table.slice(batch_rows)
                        pending, held = ([rest] if rest.num_rows else []), rest.num_rows
            offset += size
    if held:
        yield pa.concat_tables(pending, promote_options="permissive").combine_chunks()


def _pinned_files(cat: Catalog, entries: list[ManifestEntry]) -> dict[str, list[StorePath]]:
    """Data files of each entry's pinned version, in one catalog read."""
    with cat.read() as con:
        rows = con.execute(
            "SELECT dataset, version, path, files FROM dataset_versions"
            " WHERE list_contains(?::VARCHAR[], dataset)",
            [[e.dataset for e in entries]],
        ).fetchall()
    found = {(d, v): [storage.join(cat.workspace.locate(p), f) for f in fs] for d, v, p, fs in rows}
    out = {}
    for e in entries:
        if (e.dataset, e.version) not in found:
            versions.resolve(cat, VersionRef(e.dataset, e.version))  # raises what is missing
        out[e.dataset] = found[(e.dataset, e.version)]
        missing = [storage.name(f) for f in out[e.dataset] if not storage.exists(f)]
        if missing:
            raise KalmixError(
                f"{e.ref}: data file(s) missing ({', '.join(missing)}); run: kalmix catalog check"
            )
    return out


def _row_groups_by_dataset(rows_file: pq.ParquetFile) -> dict[str, list[int]]:
    """Row groups of a rows file per dataset (`create_mixture` never lets one span two)."""
    out: dict[str, list[int]] = {}
    for i in range(rows_file.num_row_groups):
        stats = rows_file.metadata.row_group(i).column(0).statistics
        out.setdefault(stats.min, []).append(i)
    return out


def iter_dataset_tables(
    cat: Catalog,
    ref: str | MixtureRef | MixtureVersion,
    *,
    batch_rows: int = 8192,
    columns: list[str] | None = None,
    datasets: list[str] | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """Yield (dataset, table of at most `batch_rows` sampled rows), dataset after dataset.

    Datasets come in manifest order (by name), rows in stored order (file, row; repeats
    adjacent), so a version always yields the same tables. Only one dataset's positions and one
    batch of records are in memory at a time. `datasets` restricts to some datasets (e.g. one
    iterator per dataset, interleaved by a trainer); `columns` restricts the record columns.
    Instructions are applied as the package docstring says. A row whose id differs from the one
    stored at creation (data changed on disk) is an error.
    """
    mv = ref if isinstance(ref, MixtureVersion) else resolve_mixture(cat, ref)
    if batch_rows <= 0:
        raise KalmixError(f"batch_rows must be positive (got {batch_rows})")
    if not mv.ids_path.exists():
        raise KalmixError(f"rows file of mixture {mv.ref} is missing: {mv.ids_path}")
    entries = [e for e in (map(mv.entry, datasets) if datasets else mv.entries) if e.rows_taken]
    overrides = set(mv.spec.get("instructions") or {})
    files = _pinned_files(cat, entries)
    stored_file = pq.ParquetFile(mv.ids_path)
    groups = _row_groups_by_dataset(stored_file)
    for entry in entries:
        read_cols = None
        if columns is not None:
            schema = storage.read_schema(files[entry.dataset][0])
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise KalmixError(
                    f"{entry.ref} has no column(s) {', '.join(unknown)}; columns: "
                    + ", ".join(schema.names)
                )
            read_cols = list(dict.fromkeys([*columns, "id"]))
        stored = stored_file.read_row_groups(
            groups.get(entry.dataset, []), columns=["file", "row", "id"]
        )
        ids = stored.column("id").combine_chunks()
        done = 0
        for table in _take_rows(
            files[entry.dataset],
            stored.column("file").to_numpy(),
            stored.column("row").to_numpy(),
            read_cols,
            batch_rows,
        ):
            expected = ids.slice(done, table.num_rows)
            if not table.column("id").combine_chunks().equals(expected):
                raise KalmixError(
                    f"{entry.ref} on disk no longer matches mixture {mv.ref} (row ids differ): "
                    "its data files changed; run: kalmix catalog check"
                )
            done += table.num_rows
            if columns is not None and "id" not in columns:
                table = table.drop_columns(["id"])
            yield entry.dataset, _fill_instruction(table, entry, entry.dataset in overrides)
        if done != len(ids):
            raise KalmixError(
                f"{entry.ref}: read {done} of the {len(ids)} rows mixture {mv.ref} sampled; "
                "its data files changed; run: kalmix catalog check"
            )


def materialize(
    cat: Catalog,
    ref: str | MixtureRef | MixtureVersion,
    out_dir: Path,
    *,
    rows_per_shard: int = 100_000,
    progress: Progress | None = None,
) -> list[Path]:
    """Write the mixture as training shards in one deterministic shuffled order.

    Shards have the record schema plus `_dataset` (operator-added columns are dropped so every
    shard has one schema). The order is a permutation seeded by the version's content hash, so
    the same version always gives the same bytes. The shuffle is external: rows are spilled to
    at most 128 bucket files by destination, then each bucket is sorted in memory, so memory is
    about rows / 128 records plus the permutation (4 or 8 bytes a row). Everything is written
    in a staging folder renamed to `out_dir` at the end; `out_dir` must not hold files.
    `_mixture.json` names the version and its content hash (readers of the folder as a Parquet
    dataset skip it by its leading underscore).
    """
    mv = ref if isinstance(ref, MixtureVersion) else resolve_mixture(cat, ref)
    out_dir = Path(out_dir)
    if rows_per_shard <= 0:
        raise KalmixError(f"rows_per_shard must be positive (got {rows_per_shard})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise KalmixError(f"{out_dir} already exists and is not empty; choose another --out")
    if mv.rows == 0:
        raise KalmixError(f"mixture {mv.ref} has no rows to materialize")
    perm = seeded_rng("materialize", mv.content_hash).permutation(mv.rows)
    perm = perm.astype(np.int32 if mv.rows < 2**31 else np.int64)
    shards = -(-mv.rows // rows_per_shard)
    per_bucket = -(-shards // 128)
    buckets = -(-shards // per_bucket)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    spill = staging / "spill"
    spill_schema = SHARD_SCHEMA.append(pa.field("_pos", pa.int64(), nullable=False))
    try:
        storage.makedirs(spill)
        sinks = [pa.OSFile(str(spill / f"{b:04d}.arrow"), "wb") for b in range(buckets)]
        writers = [ipc.new_stream(s, spill_schema) for s in sinks]
        done = 0
        for dataset, table in iter_dataset_tables(cat, mv, batch_rows=65_536):
            table = table.select(list(RECORD_FIELDS)).cast(RECORD_SCHEMA)
            dest = perm[done : done + table.num_rows].astype(np.int64)
            done += table.num_rows
            table = table.append_column(
                pa.field(DATASET_COLUMN, pa.string(), nullable=False),
                pa.repeat(pa.scalar(dataset, pa.string()), table.num_rows),
            ).append_column(pa.field("_pos", pa.int64(), nullable=False), pa.array(dest))
            bucket = dest // rows_per_shard // per_bucket
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
            for b in range(buckets):
                if bounds[b + 1] > bounds[b]:
                    writers[b].write_table(table.take(order[bounds[b] : bounds[b + 1]]))
            if progress:
                progress(table.num_rows)
        for w, s in zip(writers, sinks, strict=True):
            w.close()
            s.close()
        del perm
        files = []
        for b in range(buckets):
            path = spill / f"{b:04d}.arrow"
            with pa.memory_map(str(path)) as source:
                table = ipc.open_stream(source).read_all()
            table = table.take(pc.sort_indices(table.column("_pos")))
            pos = table.column("_pos").to_numpy()
            shard_of = pos // rows_per_shard
            for shard in np.unique(shard_of):
                lo, hi = np.searchsorted(shard_of, [shard, shard + 1])
                name = f"part-{int(shard):05d}.parquet"
                pq.write_table(
                    table.slice(lo, hi - lo).drop_columns(["_pos"]),
                    staging / name,
                    compression="zstd",
                )
                files.append(out_dir / name)
            path.unlink()
        storage.rmtree(spill)
        (staging / "_mixture.json").write_text(
            canonical(
                {
                    "mixture": str(mv.ref),
                    "content_hash": mv.content_hash,
                    "rows": mv.rows,
                    "shards": len(files),
                }
            )
            + "\n"
        )
        if out_dir.exists():
            out_dir.rmdir()
        storage.move(staging, out_dir)
    except BaseException:
        storage.rmtree(staging)
        raise
    return files
