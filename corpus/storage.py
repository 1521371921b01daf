"""Where Parquet shards live: a local folder, or any pyarrow or fsspec filesystem by URI.

On a Ray cluster without a shared filesystem the workers on other machines must read the
shards themselves, so a workspace can keep its dataset versions on an object store
(`[storage] data = "s3://bucket/prefix"` in `kalmix.toml`). Paths stay plain values: a local
`Path` (or path string), or a URI string. `resolve` turns either into a pyarrow filesystem and
a path on it: pyarrow's own filesystems first (S3, GCS, HDFS, ABFS; credentials and endpoint
from the usual environment, e.g. `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`), then any installed
fsspec protocol, wrapped. Local paths keep their fast, atomic local operations.

An object store has no atomic folder rename: `move` copies file by file, then deletes. That
is still safe for the catalog, because a version exists only once its catalog row commits,
in the transaction that follows the move (see `catalog.versions.commit`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from corpus.errors import KalmixError

StorePath = Path | str  # a local path, or a URI such as s3://bucket/key


def is_uri(path: StorePath) -> bool:
    """True for `scheme://...` other than `file://` (which is a local path)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local(path: StorePath) -> Path:
    text = str(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


@lru_cache(maxsize=32)
def _filesystem(scheme: str, authority: str) -> pafs.FileSystem:
    uri = f"{scheme}://{authority}"
    try:
        return pafs.FileSystem.from_uri(uri)[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass  # not a pyarrow scheme: try fsspec
    try:
        import fsspec

        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as err:
        raise KalmixError(
            f"no filesystem for {uri}: {err} (pyarrow knows s3://, gs://, hdfs://, abfs://; "
            "other schemes need their fsspec package installed, e.g. adlfs, ossfs)"
        ) from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def resolve(path: StorePath) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a local path or a URI; one filesystem per store."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(local(path).absolute())
    parts = urlsplit(str(path))
    # both pyarrow (bucket/key) and fsspec (memory://a/b -> a/b) keep the authority in the path
    return _filesystem(parts.scheme, parts.netloc), f"{parts.netloc}{parts.path}".rstrip("/") or "/"


def join(base: StorePath, *parts: str) -> StorePath:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return local(base).joinpath(*parts)


def name(path: StorePath) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _info(path: StorePath) -> pafs.FileInfo:
    fs, p = resolve(path)
    return fs.get_file_info(p)


def exists(path: StorePath) -> bool:
    if not is_uri(path):
        return local(path).exists()
    return _info(path).type != pafs.FileType.NotFound


def listdir(folder: StorePath) -> list[tuple[str, bool]]:
    """(name, is_folder) of each entry directly in `folder`, sorted; [] if it does not exist."""
    if not is_uri(folder):
        root = local(folder)
        return sorted((p.name, p.is_dir()) for p in root.iterdir()) if root.is_dir() else []
    fs, p = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def parquet_files(folder: StorePath) -> list[StorePath]:
    """The `.parquet` files directly in `folder`, by name."""
    return [
        join(folder, n) for n, is_dir in listdir(folder) if not is_dir and n.endswith(".parquet")
    ]


def makedirs(folder: StorePath) -> None:
    if not is_uri(folder):
        local(folder).mkdir(parents=True, exist_ok=True)
        return
    fs, p = resolve(folder)
    fs.create_dir(p, recursive=True)


def rmtree(folder: StorePath) -> None:
    """Remove a folder and everything in it; missing is fine."""
    if not is_uri(folder):
        shutil.rmtree(local(folder), ignore_errors=True)
        return
    fs, p = resolve(folder)
    try:
        fs.delete_dir(p)
    except FileNotFoundError:
        pass


def move(src: StorePath, dst: StorePath) -> None:
    """Rename a folder: atomic `os.rename` locally; file by file (copy, delete) on a store."""
    if not is_uri(src) and not is_uri(dst):
        os.rename(local(src), local(dst))
        return
    fs, s = resolve(src)
    _, d = resolve(dst)
    if fs.get_file_info(d).type != pafs.FileType.NotFound:
        raise FileExistsError(d)
    for info in fs.get_file_info(pafs.FileSelector(s, recursive=True)):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, d + info.path[len(s) :])
    fs.delete_dir(s)


def open_input(path: StorePath) -> Any:
    """A random-access file to read (what `pq.ParquetFile` and hashing take)."""
    fs, p = resolve(path)
    return fs.open_input_file(p)


def open_input_stream(path: StorePath) -> Any:
    """A sequential stream, decompressed by the name's extension (.gz, .zst, .bz2, ...)."""
    fs, p = resolve(path)
    return fs.open_input_stream(p, compression="detect")


def read_table(path: StorePath, columns: list[str] | None = None) -> pa.Table:
    fs, p = resolve(path)
    return pq.read_table(p, columns=columns, filesystem=fs)


def row_groups(path: StorePath) -> list[int]:
    """Rows in each row group of a Parquet file, in order."""
    fs, p = resolve(path)
    meta = pq.read_metadata(p, filesystem=fs)
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def iter_row_group(
    path: StorePath, index: int, columns: list[str] | None = None, batch_rows: int = 65536
) -> Iterator[pa.Table]:
    """One row group of a Parquet file as tables of at most `batch_rows` rows (the `columns`
    it has, None: all), read incrementally so memory stays at about one batch."""
    with open_input(path) as f:
        parquet = pq.ParquetFile(f)
        if columns is not None:
            columns = [c for c in columns if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_rows, row_groups=[index], columns=columns):
            yield pa.Table.from_batches([batch])


def read_schema(path: StorePath) -> pa.Schema:
    fs, p = resolve(path)
    return pq.read_schema(p, filesystem=fs)


def num_rows(path: StorePath) -> int:
    fs, p = resolve(path)
    return pq.read_metadata(p, filesystem=fs).num_rows


def parquet_writer(path: StorePath, schema: pa.Schema, **options: Any) -> pq.ParquetWriter:
    fs, p = resolve(path)
    return pq.ParquetWriter(p, schema, filesystem=fs, **options)


@contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A temporary local path to write `path`'s new content to: renamed over `path` when the
    block ends without error, so a kill leaves the old file or the new one, never half of one;
    removed otherwise. It keeps the suffix (`np.save` would add `.npy` to any other name)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: StorePath, data: bytes) -> None:
    fs, p = resolve(path)
    with fs.open_output_stream(p, compression=None) as out:  # the bytes as given
        out.write(data)


def duckdb_scan(con: Any, paths: list[StorePath], view: str = "shards") -> str:
    """A DuckDB relation over Parquet files, columns united by name.

    Local files go to DuckDB's own `read_parquet`. Files on a store are scanned as an Arrow
    dataset registered on `con` under `view` (DuckDB's `httpfs` extension is a download,
    which an offline machine cannot make; the Arrow scan still pushes projections down).
    """
    if not any(is_uri(p) for p in paths):
        return f"read_parquet({[str(p) for p in paths]!r}, union_by_name = true)"
    import pyarrow.dataset as pads

    fs, files = _on_store(paths)
    schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in files])
    con.register(view, pads.dataset(files, schema=schema, format="parquet", filesystem=fs))
    return view


def ray_paths(paths: list[StorePath]) -> tuple[list[str], pafs.FileSystem | None]:
    """Paths and filesystem for `ray.data.read_parquet` (None: Ray resolves local paths)."""
    if not any(is_uri(p) for p in paths):
        return [str(p) for p in paths], None
    fs, files = _on_store(paths)
    return files, fs


def _on_store(paths: list[StorePath]) -> tuple[pafs.FileSystem, list[str]]:
    """The store's filesystem and the paths on it (the files of one version share a store)."""
    return resolve(paths[0])[0], [resolve(p)[1] for p in paths]
