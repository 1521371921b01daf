"""Dedup operator: exact duplicates first, then MinHash LSH near-duplicates.

1. Exact pass (`filters.exact`): normalised-text groups; one keeper each.
2. Near-duplicate pass over the survivors:
   - shingles per record by script (word n-grams, or character n-grams for CJK and mixed
     text), MinHash signatures identical to datasketch's (`corpus.minhash`), computed batch by
     batch on a process pool, kept in one uint32 matrix;
   - LSH with datasketch's band/row choice for the threshold (its `_optimal_param`, with
     false negatives weighted above false positives: see `corpus.minhash.LSH_WEIGHTS`);
     candidate pairs are documents sharing a band bucket (polars group-by);
   - every candidate pair is verified: its estimated Jaccard (share of equal signature
     values) must reach the threshold, otherwise it is dropped;
   - verified pairs form clusters (union-find, `filters.clusters`) and the keeper rule picks
     one survivor per cluster (see "Keeper" below). A member is removed only if its own
     estimated Jaccard with the keeper reaches the threshold; members that joined the cluster
     through a chain (A~B, B~C, but A and C too far apart) stay and are clustered again among
     themselves, round after round, so no removal is ever justified by transitivity alone.

Keeper (`DedupConfig.prefer`; `filters.clusters` has the full rule): `--priority` first, then
with the default `prefer="cleanest"` the least noisy copy, then the first row:
- of exact-normalised copies (texts equal after `corpus.text.normalize`), the least upper-case
  share (in tenths of the cased letters), then the least whitespace noise (leading/trailing
  whitespace, runs of spaces, tabs): an upper-cased, double-spaced copy loses to its original;
- of near duplicates (MinHash clusters, whose members are not exact-normalised copies: the
  exact pass ran first), the same rule, not the longest text. Measured (`benchmarks/dedup.py`,
  keeper section: 5,000 planted near copies, edited, noisy, cut or padded with boilerplate),
  originals removed instead of their copy with the copies shuffled / after the originals:
  longest 3,106 / 3,065, cleanest 1,833 / 3, cleanest with a length step before the row order
  1,859 / 1,818 (it wins on cut copies, loses on padded ones and on row order).
`prefer="longest"` (most characters, then the first row: the default before) and
`prefer="first"` (row order) apply one test to both kinds.

Removals record `dup_of` (the keeper's id, and its dataset under `--across`) and the
estimated Jaccard with it. An exact duplicate's `dup_of` is the identical copy that survived
the exact pass; if that copy was then removed as a near duplicate, its own removal names the
row it duplicates. Records with no text in the chosen fields are left alone.

Calling the operator on a table (`--executor inline`) holds the table, its signatures and every
intermediate in memory. `kalmix dedup`'s default `--executor local` runs the same steps out of
core (`Dedup.local_plan`, `filters.dedup_local`): signatures, exact keys and band keys per row
group on the process pool, written to Parquet in the workspace cache, the exact pass and the
banding as DuckDB group-bys under `--memory-limit`, and this module's verification and keeper
rule on the rows of candidate pairs only; the result is the same, row for row.

The same operator runs on Ray Data (`Dedup.ray_plan`, `kalmix dedup --executor ray`) with the
same result, row for row: signatures are a row-local `map_batches` over the Parquet shards;
the exact pass and the LSH banding are group-bys (hash shuffles) of Ray Data on a partition key
derived from the normalised text or the band key, and each partition is grouped in polars by
the very code the local path runs; only the candidate pairs and the rows in them (few) come
back to the driver, which verifies them and runs the union-find.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from corpus import storage
from corpus.errors import KalmixError
from corpus.minhash import (
    LSH_WEIGHTS,
    MinHashConfig,
    MinHasher,
    band_keys,
    bucket_pairs,
    candidate_pairs,
    estimated_jaccard,
    lsh_params,
    signatures_parallel,
    unique_pairs,
)
from corpus.operator import (
    DATASET_COLUMN,
    LocalPlan,
    Operator,
    OpResult,
    RayPlan,
    Shard,
    empty_removals,
    split_rows,
)
from corpus.text import FIELD_SEPARATOR, normalize, record_text
from filters.clusters import KeeperRule, Keepers, duplicate_details, resolve_duplicates
from filters.dedup_local import memory_bytes
from filters.exact import exact_dedup

if TYPE_CHECKING:
    from corpus.executor import RayExecutor

REASON = "near_duplicate"


@dataclass(frozen=True)
class DedupConfig:
    fields: tuple[str, ...] = ("query", "positive")
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    hash: Literal["poly", "sha1"] = "poly"
    lsh_weights: tuple[float, float] = LSH_WEIGHTS
    near: bool = True  # False: exact pass only
    prefer: Literal["cleanest", "longest", "first"] = "cleanest"
    priority: tuple[str, ...] = ()
    priority_column: str = "source"
    workers: int = 0  # signature processes; 0 = one per core
    batch_docs: int = 4096
    memory_limit: str = "4GB"  # --executor local: DuckDB's limit, and what sizes the batches
    work_dir: str | None = None  # --executor local: its temporary files (None: the system's)
    minhash: MinHashConfig = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise KalmixError(f"--threshold must be in (0, 1], got {self.threshold}")
        KeeperRule(self.prefer)  # a bad --prefer is an error now, before any work
        if len(self.lsh_weights) != 2 or min(self.lsh_weights) < 0 or sum(self.lsh_weights) <= 0:
            raise KalmixError(
                f"--lsh-weights must be two non-negative numbers, got {self.lsh_weights}"
            )
        memory_bytes(self.memory_limit)  # a bad --memory-limit fails before any work
        minhash = MinHashConfig(self.num_perm, self.seed, self.ngram, self.hash)
        object.__setattr__(self, "minhash", minhash)

    @property
    def rule(self) -> KeeperRule:
        return KeeperRule(self.prefer, self.fields, self.priority, self.priority_column)

    def params(self) -> dict:
        """What the catalog records as the operation's parameters."""
        return {
            "fields": list(self.fields),
            "threshold": self.threshold,
            "num_perm": self.num_perm,
            "ngram": self.ngram,
            "seed": self.seed,
            "hash": self.hash,
            "lsh_weights": list(self.lsh_weights),
            "near": self.near,
            "prefer": self.prefer,
            "priority": list(self.priority),
            "priority_column": self.priority_column,
        }


@dataclass
class NearDuplicates:
    """Outcome of the near-duplicate pass over n rows."""

    keepers: Keepers  # who stays, and which row each removed one duplicates
    jaccard: np.ndarray  # estimated Jaccard of each row with its keeper (1 for kept rows)
    stats: dict


def near_duplicates(
    table: pa.Table,
    sig: np.ndarray,
    candidates: np.ndarray,
    config: DedupConfig,
) -> NearDuplicates:
    """LSH candidate pairs among `candidates` (the rows with text), then `resolve_pairs`.

    `sig` holds a signature per row of `table`.
    """
    bands, rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    left, right = candidate_pairs(sig, candidates, bands, rows)
    return resolve_pairs(table, sig, left, right, config)


def resolve_pairs(
    table: pa.Table,
    sig: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    config: DedupConfig,
) -> NearDuplicates:
    """Verify candidate pairs, cluster, and choose removals (see the module docstring).

    Only rows in a pair matter, so `table`/`sig` may hold just those rows (in input order,
    pairs as positions in it): that is how the Ray path runs this on the driver.
    """
    bands, rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    jac = estimated_jaccard(sig, left, right)
    verified = jac >= config.threshold
    left, right = left[verified], right[verified]
    keepers, jaccard, rounds = resolve_duplicates(
        table, left, right, lambda a, b: estimated_jaccard(sig, a, b), config.threshold, config.rule
    )
    keep = keepers.keep
    stats = {
        "bands": bands,
        "rows_per_band": rows,
        "candidate_pairs": int(verified.size),
        "verified_pairs": int(verified.sum()),
        "cluster_rounds": rounds,
        "near_duplicates": int((~keep).sum()),
    }
    return NearDuplicates(keepers, jaccard, stats)


@dataclass
class Dedup(Operator):
    """The dedup operator (`table -> OpResult`).

    `on_signed(done, total)` is called after each batch of signatures (for a progress bar).
    """

    config: DedupConfig = field(default_factory=DedupConfig)
    on_signed: Callable[[int, int], None] | None = None

    def __call__(self, table: pa.Table) -> OpResult:
        start = time.perf_counter()
        config = self.config
        exact = exact_dedup(table, config.fields, config.rule)
        stats = {"rows": table.num_rows, "exact_duplicates": exact.stats["exact_duplicates"]}
        if not config.near:
            stats["seconds"] = round(time.perf_counter() - start, 3)
            return OpResult(exact.table, exact.removed, stats)
        survivors = exact.table
        texts = record_text(survivors, config.fields).to_arrow()
        signed = time.perf_counter()
        report = self.on_signed
        sig = signatures_parallel(
            texts,
            config.minhash,
            config.workers,
            config.batch_docs,
            (lambda k: report(k, len(texts))) if report else None,
        )
        stats["signature_seconds"] = round(time.perf_counter() - signed, 3)
        # An empty shingle set leaves every signature value at its maximum.
        has_text = (sig != np.uint32(0xFFFFFFFF)).any(axis=1)
        stats["without_text"] = int((~has_text).sum())
        near = near_duplicates(survivors, sig, np.flatnonzero(has_text), config)
        stats.update(near.stats)
        details = duplicate_details(survivors, near.keepers, near.jaccard)
        kept, removed = split_rows(survivors, near.keepers.keep, REASON, details)
        stats["seconds"] = round(time.perf_counter() - start, 3)
        return OpResult(kept, pa.concat_tables([exact.removed, removed]), stats)

    def params(self) -> dict:
        return self.config.params()

    def ray_plan(self) -> RayPlan:
        """The same result on Ray Data: `dedup_on_ray`."""
        return functools.partial(dedup_on_ray, self.config)

    def local_plan(self) -> LocalPlan:
        """The same result out of core on this machine: `filters.dedup_local`."""
        from filters.dedup_local import dedup_out_of_core

        return lambda executor, shards: dedup_out_of_core(self.config, shards, self.on_signed)


# --- Ray Data ---------------------------------------------------------------------------------

ROW, SIG, PART = "_row", "_sig", "_part"
ROWS_PER_PARTITION = 200_000  # rows per hash partition of the group-by shuffles


def _sig_column(sig: np.ndarray) -> pa.Array:
    """A (rows x num_perm) uint32 matrix as one fixed-size binary value per row."""
    data = pa.py_buffer(np.ascontiguousarray(sig, dtype=np.uint32).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(sig.shape[1] * 4), sig.shape[0], [None, data]
    )


def _sig_matrix(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    start = column.offset * num_perm * 4
    flat = np.frombuffer(column.buffers()[1], np.uint32, len(column) * num_perm, start)
    return flat.reshape(len(column), num_perm)


@dataclass(frozen=True)
class _Annotate:
    """Row-local: read one shard, number its rows in corpus order, add the partition of its
    normalised text (for the exact pass) and its MinHash signature."""

    config: DedupConfig
    partitions: int
    hasher: MinHasher  # made on the driver: workers need not import datasketch

    def __call__(self, shard: pa.Table) -> pa.Table:
        [path], [dataset], [offset] = (shard.column(c).to_pylist() for c in shard.column_names)
        table = storage.read_table(path)
        n = table.num_rows
        if dataset is not None:
            table = table.append_column(DATASET_COLUMN, pa.array([dataset] * n, pa.string()))
        fields = self.config.fields
        norm = pl.Series(normalize(record_text(table, fields, separator=FIELD_SEPARATOR)))
        part = (norm.hash(seed=0) % self.partitions).cast(pl.Int64).to_arrow()
        sig = self.hasher.signatures(record_text(table, fields).to_arrow())
        table = table.append_column(ROW, pa.array(np.arange(offset, offset + n, dtype=np.int64)))
        return table.append_column(PART, part).append_column(SIG, _sig_column(sig))


def _exact_partition(part: pa.Table, config: DedupConfig) -> pa.Table:
    """One partition of the exact pass (all rows of any normalised text): `exact_dedup` itself,
    on the rows in corpus order; the removals carry their row number."""
    part = part.sort_by(ROW)
    exact = exact_dedup(part, config.fields, config.rule)
    gone = np.setdiff1d(part.column(ROW).to_numpy(), exact.table.column(ROW).to_numpy())
    return exact.removed.append_column(ROW, pa.array(gone, pa.int64()))


@dataclass(frozen=True)
class _BandKeys:
    """Row-local: (band, key, row, partition) for every band of every row with text that the
    exact pass kept (`gone`: sorted rows it removed)."""

    num_perm: int
    bands: int
    band_rows: int
    partitions: int
    gone: np.ndarray

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.column(ROW).to_numpy()
        sig = _sig_matrix(batch.column(SIG), self.num_perm)
        take = (sig != np.uint32(0xFFFFFFFF)).any(axis=1) & ~np.isin(rows, self.gone)
        sig, rows = sig[take], rows[take]
        schema = {"band": pl.Int32, "key": pl.UInt64, "row": pl.Int64}
        frame = pl.concat(
            [
                pl.DataFrame(
                    {"band": b, "key": band_keys(sig, b, self.band_rows), "row": rows}, schema
                )
                for b in range(self.bands)
            ]
        )
        return frame.with_columns(
            (pl.col("key") % self.partitions).cast(pl.Int64).alias(PART)
        ).to_arrow()


def _pair_partition(part: pa.Table) -> pa.Table:
    """One partition of the LSH banding (all rows of any band bucket): its candidate pairs."""
    pairs = bucket_pairs(pl.from_arrow(part).select("band", "key", "row")).unique()
    return pairs.select(pl.col("left", "right").cast(pl.Int64)).to_arrow()


@dataclass(frozen=True)
class _Rows:
    """Row-local: keep only the `rows` (sorted row numbers), or everything but them."""

    rows: np.ndarray
    keep: bool
    drop: tuple[str, ...]

    def __call__(self, batch: pa.Table) -> pa.Table:
        mask = np.isin(batch.column(ROW).to_numpy(), self.rows)
        return batch.filter(pa.array(mask if self.keep else ~mask)).drop_columns(list(self.drop))


def _collect(ds) -> pa.Table | None:
    """Stream a (small) Ray dataset to the driver, in order; None when it has no batch."""
    parts = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def dedup_on_ray(
    config: DedupConfig,
    executor: RayExecutor,
    shards: list[Shard],
    partitions: int = 0,
) -> OpResult:
    """`Dedup` over Parquet shards on Ray Data; `partitions` of the shuffles (0: by size).

    Identical to the local operator on the concatenated shards (with a `_dataset` column when
    the shards name their dataset): same rows kept in the same order, same removals in the
    same order. What reaches the driver: the removals, the candidate pairs and the rows in them,
    and the kept rows streamed back in order for the new versions.
    """
    start = time.perf_counter()
    ray = executor._ray()
    across = shards[0][0] is not None
    first = storage.read_schema(shards[0][1])
    record_text(first.empty_table(), config.fields)  # a bad --fields fails here, not in a task
    sizes = [storage.num_rows(path) for _, path in shards]
    n = int(sum(sizes))
    partitions = partitions or max(1, -(-n // ROWS_PER_PARTITION))
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int).tolist()
    items = [
        {"path": path, "dataset": dataset, "offset": offset}
        for (dataset, path), offset in zip(shards, offsets, strict=True)
    ]
    annotated = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(
            _Annotate(config, partitions, MinHasher(config.minhash)),
            batch_size=1,
            batch_format="pyarrow",
        )
        .materialize()
    )
    stats: dict = {"rows": n, "signature_seconds": round(time.perf_counter() - start, 3)}

    removal_schema = empty_removals(across).schema
    kept_columns = ["id", *config.fields, config.priority_column, DATASET_COLUMN, ROW, PART]
    names = set(first.names) | {ROW, PART} | ({DATASET_COLUMN} if across else set())
    exact = _collect(
        annotated.select_columns(list(dict.fromkeys(c for c in kept_columns if c in names)))
        .groupby(PART, num_partitions=partitions)
        .map_groups(_exact_partition, fn_kwargs={"config": config}, batch_format="pyarrow")
    )
    if exact is None or exact.num_rows == 0:
        exact = removal_schema.empty_table().append_column(ROW, pa.array([], pa.int64()))
    exact = exact.sort_by(ROW)
    exact_rows = exact.column(ROW).to_numpy()
    stats["exact_duplicates"] = len(exact_rows)

    bands, band_rows = lsh_params(config.threshold, config.num_perm, config.lsh_weights)
    keys = _BandKeys(config.num_perm, bands, band_rows, partitions, exact_rows)
    keyed = annotated.select_columns([ROW, SIG]).map_batches(keys, batch_format="pyarrow")
    keyed = keyed.materialize()
    stats["without_text"] = n - len(exact_rows) - keyed.count() // bands
    pairs = _collect(
        keyed.groupby(PART, num_partitions=partitions).map_groups(
            _pair_partition, batch_format="pyarrow"
        )
    )
    left, right = unique_pairs([pl.from_arrow(pairs)] if pairs is not None else [])

    involved = np.unique(np.concatenate([left, right]))
    subset = None
    if involved.size:
        rows_only = _Rows(involved, True, (PART,))
        subset = _collect(annotated.map_batches(rows_only, batch_format="pyarrow"))
    if subset is None:
        subset, sig = pa.table({ROW: pa.array([], pa.int64())}), np.zeros((0, config.num_perm))
    else:
        subset = subset.sort_by(ROW)
        sig = _sig_matrix(subset.column(SIG), config.num_perm)
        subset = subset.drop_columns([SIG])
    near = resolve_pairs(
        subset, sig, np.searchsorted(involved, left), np.searchsorted(involved, right), config
    )
    stats.update(near.stats)
    if subset.num_rows:
        details = duplicate_details(subset, near.keepers, near.jaccard)
        _, near_removed = split_rows(subset, near.keepers.keep, REASON, details)
        near_rows = subset.column(ROW).to_numpy()[~near.keepers.keep]
    else:
        near_removed, near_rows = removal_schema.empty_table(), np.zeros(0, np.int64)

    gone = np.sort(np.concatenate([exact_rows, near_rows]))
    kept = _collect(
        annotated.map_batches(_Rows(gone, False, (ROW, PART, SIG)), batch_format="pyarrow")
    )
    removed = pa.concat_tables(
        [exact.drop_columns([ROW]).cast(removal_schema), near_removed.cast(removal_schema)]
    )
    stats["seconds"] = round(time.perf_counter() - start, 3)
    stats["executor"] = "ray"
    return OpResult(kept, removed, stats)
