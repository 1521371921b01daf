"""Creating and finding mixture versions: sample the planned rows, store their positions, and
register `name@vN` in the catalog (rows file renamed into place in the same transaction, with
`catalog.versions`' staging and renaming, as for dataset versions).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog import versions
from catalog.db import Catalog, fetch_one
from catalog.mixtures.plan import Pin, make_plan
from catalog.mixtures.spec import (
    ManifestEntry,
    MixtureRef,
    MixtureSpec,
    MixtureVersion,
    Progress,
)
from catalog.versions import Staged
from corpus import storage
from corpus.errors import KalmixError
from corpus.executor import prefetch_map
from corpus.schema import UNKNOWN_LANGUAGE, suggest

ROWS_FILE = "rows.parquet"
ROWS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("file", pa.int32(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
    ]
)


def mixtures_dir(cat: Catalog) -> Path:
    """Mixture versions live in the workspace itself, whatever `[storage] data` says."""
    return cat.workspace.root / "mixtures"


def seeded_rng(*parts: object) -> np.random.Generator:
    """A generator seeded by `parts` alone, so a dataset's draw never depends on the others."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _sample_positions(n: int, taken: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row positions in [0, n): every row floor(taken/n) times, the rest without repeats."""
    full, rest = divmod(taken, n)
    parts = [np.tile(np.arange(n, dtype=np.int64), full)] if full else []
    parts.append(rng.permutation(n)[:rest].astype(np.int64))
    positions = np.concatenate(parts)
    positions.sort(kind="stable")
    return positions


def _file_offsets(pin: Pin) -> np.ndarray:
    """Start row of each file, plus the end; checks the files against the catalog."""
    counts = []
    for f in pin.files:
        try:
            counts.append(storage.num_rows(f))
        except FileNotFoundError:
            raise KalmixError(
                f"{pin.dataset}@v{pin.version}: data file missing ({f}); run: kalmix catalog check"
            ) from None
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    if offsets[-1] != pin.rows:
        raise KalmixError(
            f"{pin.dataset}@v{pin.version}: files hold {offsets[-1]} rows, the catalog says "
            f"{pin.rows}; run: kalmix catalog check"
        )
    return offsets


def _sample(pin: Pin, taken: int, seed: int) -> tuple[pa.Table, dict[str, int]]:
    """The rows table (ROWS_SCHEMA) of one dataset and the language counts of the rows taken."""
    offsets = _file_offsets(pin)
    positions = _sample_positions(pin.rows, taken, seeded_rng(seed, pin.dataset, pin.version))
    file_idx = np.searchsorted(offsets, positions, side="right") - 1
    row_idx = positions - offsets[file_idx]
    ids, langs = [], []
    for f in np.unique(file_idx):
        rows = row_idx[file_idx == f]
        pf = pq.ParquetFile(storage.open_input(pin.files[f]))
        table = pf.read(columns=["id", "language"]).take(rows)
        ids.extend(table.column("id").chunks)
        langs.extend(table.column("language").chunks)
    language = pc.fill_null(pa.chunked_array(langs, pa.string()), UNKNOWN_LANGUAGE)
    counts = {
        v["values"]: v["counts"] for v in pc.value_counts(language.combine_chunks()).to_pylist()
    }
    table = pa.table(
        {
            "dataset": pa.repeat(pa.scalar(pin.dataset, pa.string()), taken),
            "version": pa.array(np.full(taken, pin.version, np.int32)),
            "file": pa.array(file_idx.astype(np.int32)),
            "row": pa.array(row_idx),
            "id": pa.chunked_array(ids, pa.string()).combine_chunks(),
        },
        schema=ROWS_SCHEMA,
    )
    return table, dict(sorted(counts.items()))


def canonical(data: Any) -> str:
    """JSON with sorted keys and no spaces: what the catalog stores and the hashes cover."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def create_mixture(
    cat: Catalog, name: str, spec: MixtureSpec | dict, *, progress: Progress | None = None
) -> MixtureVersion:
    """Resolve, sample and register `name@v(N+1)`: ids file first, then the catalog row.

    `progress` is called with the number of rows sampled after each dataset.
    """
    versions.check_name(name, "mixture")
    spec = spec if isinstance(spec, MixtureSpec) else MixtureSpec.from_dict(spec)
    pins, planned = make_plan(cat, spec)
    with versions.staging_in(mixtures_dir(cat) / name) as staged:
        entries: list[ManifestEntry] = []
        digest = hashlib.sha256()
        # Datasets are sampled on two threads (Parquet decoding releases the GIL) and written
        # in manifest order, so the file is the same whatever the timing.
        samples = prefetch_map(
            lambda pe: _sample(pe[0], pe[1].rows_taken, spec.seed) if pe[1].rows_taken else None,
            zip(pins, planned, strict=True),
            workers=2,
            ahead=4,
        )
        with storage.parquet_writer(
            storage.join(staged.path, ROWS_FILE),
            ROWS_SCHEMA,
            compression="zstd",
            use_dictionary=["dataset"],
        ) as writer:
            for pin, entry, sample in zip(pins, planned, samples, strict=True):
                languages: dict[str, int] = {}
                if sample is not None:
                    table, languages = sample
                    writer.write_table(table, row_group_size=1 << 20)
                    for col in ("file", "row"):
                        digest.update(table.column(col).to_numpy().astype("<i8").tobytes())
                    if progress:
                        progress(entry.rows_taken)
                entries.append(_with_languages(entry, languages))
                digest.update(pin.content_hash.encode())
        manifest = [asdict(e) for e in entries]
        digest.update(canonical(manifest).encode())
        return _commit(cat, name, staged, spec, entries, digest.hexdigest())


def _with_languages(entry: ManifestEntry, languages: dict[str, int]) -> ManifestEntry:
    return ManifestEntry(**{**asdict(entry), "languages": languages})


def _commit(
    cat: Catalog,
    name: str,
    staged: Staged,
    spec: MixtureSpec,
    entries: list[ManifestEntry],
    content_hash: str,
) -> MixtureVersion:
    """Rename the staged rows file's folder to `v<N>` and insert the row, in one transaction."""
    rows = sum(e.rows_taken for e in entries)
    with ExitStack() as placed, cat.write() as con:
        registered = con.execute(
            "SELECT coalesce(max(version), 0) FROM mixture_versions WHERE mixture = ?", [name]
        ).fetchall()[0][0]
        number, final = placed.enter_context(versions.into_place(staged, registered))
        if fetch_one(con, "SELECT 1 FROM mixtures WHERE name = ?", [name]) is None:
            con.execute("INSERT INTO mixtures(name) VALUES (?)", [name])
        con.execute(
            "INSERT INTO mixture_versions(mixture, version, spec, manifest, ids_path, rows,"
            " content_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                name,
                number,
                canonical(spec.to_dict()),
                canonical([asdict(e) for e in entries]),
                cat.workspace.record(storage.join(final, ROWS_FILE)),
                rows,
                content_hash,
            ],
        )
    return resolve_mixture(cat, MixtureRef(name, number))


def resolve_mixture(cat: Catalog, ref: str | MixtureRef) -> MixtureVersion:
    """The version a reference names (latest if unversioned), or an error naming what exists."""
    if isinstance(ref, str):
        ref = MixtureRef.parse(ref)
    with cat.read() as con:
        columns = "version, spec, manifest, ids_path, rows, content_hash, created_at"
        row, existing = versions.fetch_version(con, "mixture", ref.name, ref.version, columns)
        if row is None:
            names = [r[0] for r in con.execute("SELECT name FROM mixtures").fetchall()]
    if row is None:
        if existing:
            raise KalmixError(
                f"mixture {ref} does not exist; {ref.name} has versions: "
                + ", ".join(f"v{v}" for v in existing)
            )
        raise KalmixError(
            f"unknown mixture {ref.name!r}{suggest(ref.name, names)} "
            "(list them with: kalmix mix list)"
        )
    version, spec, manifest, ids_path, rows, chash, created = row
    return MixtureVersion(
        name=ref.name,
        version=version,
        spec=json.loads(spec),
        entries=[ManifestEntry(**e) for e in json.loads(manifest)],
        rows=rows,
        ids_path=cat.workspace.root / ids_path,
        content_hash=chash,
        created_at=created,
    )


def list_mixtures(cat: Catalog) -> pa.Table:
    """One row per mixture: its versions and its latest version's size."""
    return cat.query(
        """
        SELECT mixture AS name, count(*) AS versions, max(version) AS latest,
               arg_max(rows, version) AS rows,
               json_array_length(arg_max(manifest, version)) AS datasets,
               max(created_at) AS updated_at
        FROM mixture_versions GROUP BY mixture ORDER BY mixture
        """
    )
