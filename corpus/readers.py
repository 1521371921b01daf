"""Streaming readers for JSONL (.gz/.zst), Parquet, CSV/TSV and `datasets.save_to_disk` folders.

Each yields pyarrow tables of at most about `batch_rows` rows, so a file larger than memory is
never loaded whole. JSONL is parsed a block of lines at a time (pyarrow with the schema seen so
far, polars inferring from every line when a block brings something new); a block
that fails both is re-parsed line by line so the error can name the line, or, with
`skip_invalid`, so exactly the bad lines are skipped and counted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from corpus import storage
from corpus.errors import KalmixError
from corpus.executor import prefetch_map
from corpus.storage import StorePath

FORMATS = ("jsonl", "parquet", "csv", "tsv", "hf")


@dataclass
class ReadStats:
    rows: int = 0
    invalid: int = 0
    invalid_lines: list[int] = field(default_factory=list)  # first few, for the message
    bytes_read: int = 0


def detect_format(path: StorePath) -> str:
    if not storage.is_uri(path) and path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        raise KalmixError(
            f"{path} is a folder but not a Hugging Face `save_to_disk` dataset "
            "(no state.json or dataset_dict.json)"
        )
    name = storage.name(path).lower()
    for suffix in (".gz", ".zst", ".zstd"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for ext, fmt in (
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
        (".csv", "csv"),
        (".tsv", "tsv"),
    ):
        if name.endswith(ext):
            return fmt
    raise KalmixError(
        f"cannot tell the format of {storage.name(path)}: use a .jsonl/.ndjson (optionally .gz/.zst), "
        ".parquet, .csv or .tsv file, or a `datasets` save_to_disk folder, or pass --format"
    )


def iter_tables(
    path: StorePath,
    fmt: str | None = None,
    *,
    batch_rows: int = 65_536,
    skip_invalid: bool = False,
    split: str | None = None,
    stats: ReadStats | None = None,
) -> Iterator[pa.Table]:
    path = path if storage.is_uri(path) else Path(path)
    if not storage.exists(path):
        raise KalmixError(f"input not found: {path}")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise KalmixError(f"unknown format {fmt!r}; one of: {', '.join(FORMATS)}")
    stats = stats if stats is not None else ReadStats()
    reader = {
        "jsonl": _jsonl,
        "parquet": _parquet,
        "csv": _csv,
        "tsv": _csv,
        "hf": _hf,
    }[fmt]
    kwargs = {"batch_rows": batch_rows, "skip_invalid": skip_invalid, "stats": stats}
    if fmt in ("csv", "tsv"):
        kwargs["delimiter"] = "\t" if fmt == "tsv" else ","
    if fmt == "hf":
        kwargs["split"] = split
    for table in reader(path, **kwargs):
        if table.num_rows:
            stats.rows += table.num_rows
            yield table


def _open_text(path: StorePath):
    """A binary stream of the file's bytes, decompressed (.gz, .zst)."""
    if storage.is_uri(path):
        return storage.open_input_stream(path)
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)
    return open(path, "rb")


def _jsonl(
    path: StorePath, *, batch_rows: int, skip_invalid: bool, stats: ReadStats
) -> Iterator[pa.Table]:
    """Blocks of whole lines, cut at the last newline of a fixed-size read (no per-line Python),
    parsed on a small thread pool while the next block is read.

    Nothing may be dropped, so the schema cannot come from the first lines only (polars'
    default silently ignores a key first seen after them). A block is parsed by pyarrow with
    the schema known so far, which fails on any key or type it does not hold (nested ones
    included); only then is the block parsed by polars inferring from every line (about twice
    the cost), and what it finds joins the known schema.
    """
    known: list[pa.Schema] = []

    def parse(block: tuple[pa.Buffer, int]) -> pa.Table:
        data, first = block
        if known:
            options = pajson.ParseOptions(
                explicit_schema=known[-1], unexpected_field_behavior="error"
            )
            try:
                return pajson.read_json(pa.BufferReader(data), parse_options=options)
            except pa.ArrowInvalid:
                pass  # a new key or type: infer from every line below
        try:
            table = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None).to_arrow()
        except Exception:  # noqa: BLE001 - any parse failure falls back to the slow path
            return _jsonl_slow(data.to_pybytes().split(b"\n"), first, path, skip_invalid, stats)
        try:
            known.append(pa.unify_schemas([*known[-1:], table.schema]))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            known.append(table.schema)
        return table

    yield from prefetch_map(parse, _line_blocks(path, max(1 << 20, batch_rows * 256), stats))


def _line_blocks(
    path: StorePath, block_bytes: int, stats: ReadStats
) -> Iterator[tuple[pa.Buffer, int]]:
    """Blocks of whole lines and the number of each block's first line.

    Each read lands straight in a fresh buffer after the previous block's unfinished line, and
    the block handed on is a zero-copy view of it: at 16 MiB blocks, copying them (concatenate,
    then cut) cost as much CPU as parsing them with an explicit schema.
    """
    line_no = 0
    tail = b""
    with _open_text(path) as stream:
        while True:
            buf = bytearray(len(tail) + block_bytes)
            buf[: len(tail)] = tail
            got = stream.readinto(memoryview(buf)[len(tail) :]) or 0
            end = len(tail) + got
            cut = buf.rfind(b"\n", 0, end) + 1 if got else end  # at the end, the rest is one line
            tail = bytes(buf[cut:end])
            if cut and (got or not buf[:cut].isspace()):
                stats.bytes_read += cut
                yield pa.py_buffer(buf).slice(0, cut), line_no + 1
            line_no += buf.count(b"\n", 0, cut)
            if not got:
                return


def _jsonl_slow(
    lines: list[bytes], first: int, path: StorePath, skip_invalid: bool, stats: ReadStats
) -> pa.Table:
    rows = []
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("a JSON line must be an object")
        except ValueError as err:
            number = first + offset
            if not skip_invalid:
                raise KalmixError(
                    f"{storage.name(path)}: line {number} is not a JSON object ({err}); fix it or pass "
                    "--skip-invalid to skip such lines (they are counted in the version's stats)"
                ) from None
            stats.invalid += 1
            if len(stats.invalid_lines) < 20:
                stats.invalid_lines.append(number)
            continue
        rows.append(
            {
                k: (json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v)
                for k, v in obj.items()
            }
        )
    if not rows:
        return pa.table({})
    try:
        return pl.from_dicts(rows, infer_schema_length=None, strict=False).to_arrow()
    except Exception:  # noqa: BLE001 - mixed types per column: keep everything as text
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return pa.table(
            {
                k: [
                    None
                    if r.get(k) is None
                    else (r[k] if isinstance(r[k], str) else json.dumps(r[k]))
                    for r in rows
                ]
                for k in keys
            }
        )


def _parquet(
    path: StorePath, *, batch_rows: int, skip_invalid: bool, stats: ReadStats
) -> Iterator[pa.Table]:
    try:
        pf = pq.ParquetFile(storage.open_input(path))
    except (pa.ArrowInvalid, OSError) as err:
        raise KalmixError(f"{storage.name(path)} is not a readable Parquet file: {err}") from None
    for batch in pf.iter_batches(batch_size=batch_rows):
        yield pa.Table.from_batches([batch])


def _csv(
    path: StorePath, *, batch_rows: int, skip_invalid: bool, stats: ReadStats, delimiter: str
) -> Iterator[pa.Table]:
    with _open_text(path) as raw:
        head = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="").readline()
    if not head.strip():
        return
    header = next(csv.reader([head], delimiter=delimiter))

    def on_invalid(row) -> str:
        if not skip_invalid:
            return "error"
        stats.invalid += 1
        if len(stats.invalid_lines) < 20 and row.number is not None:
            stats.invalid_lines.append(row.number)
        return "skip"

    try:
        reader = pacsv.open_csv(
            _open_text(path),
            read_options=pacsv.ReadOptions(block_size=1 << 22, encoding="utf8"),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c.lstrip("\ufeff"): pa.string() for c in header},
                strings_can_be_null=False,
            ),
        )
        pending: list[pa.RecordBatch] = []
        count = 0
        for batch in reader:
            pending.append(batch)
            count += batch.num_rows
            if count >= batch_rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
        if pending:
            yield pa.Table.from_batches(pending)
    except pa.ArrowInvalid as err:
        raise KalmixError(
            f"{storage.name(path)}: malformed CSV ({err}); fix it or pass --skip-invalid"
        ) from None


def _hf(
    path: StorePath, *, batch_rows: int, skip_invalid: bool, stats: ReadStats, split: str | None
) -> Iterator[pa.Table]:
    if storage.is_uri(path):
        raise KalmixError(f"{path}: a `datasets` save_to_disk folder must be on local disk")
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        chosen = split or ("train" if "train" in splits else None)
        if chosen not in splits:
            raise KalmixError(f"{path} holds splits {', '.join(splits)}: choose one with --split")
        path = path / chosen
    state = json.loads((path / "state.json").read_text())
    info_file = path / "dataset_info.json"
    features = json.loads(info_file.read_text()).get("features", {}) if info_file.exists() else {}
    class_names = {
        name: feat["names"]
        for name, feat in features.items()
        if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names")
    }
    for entry in state["_data_files"]:
        with pa.memory_map(str(path / entry["filename"])) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                table = pa.Table.from_batches([batch])
                for name, names in class_names.items():
                    if name in table.column_names:
                        labels = pa.array(
                            [
                                names[i] if i is not None and i >= 0 else None
                                for i in table.column(name).to_pylist()
                            ],
                            pa.string(),
                        )
                        table = table.set_column(table.column_names.index(name), name, labels)
                yield table
