"""The one Arrow record schema shared by every dataset, and the conversion into it.

Every dataset in a workspace, whatever its task type, is stored with these columns so that any
operator runs on any dataset and mixtures can concatenate them. `label` is an addition to the
design's field list: classification and clustering sets need their class to become contrastive
data (positives of the same class, negatives of other classes), and a string column is clearer
than burying it in `meta`. Operators may append columns (`lang_score`, `consistency_rank`, ...).
"""

from __future__ import annotations

import difflib
import threading
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from corpus.errors import KalmixError

TASK_TYPES: tuple[str, ...] = (
    "retrieval",
    "sts",
    "classification",
    "clustering",
    "pair_classification",
    "reranking",
    "bitext",
)

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("instruction", pa.string()),
        pa.field("query", pa.string()),
        pa.field("positive", pa.string()),
        pa.field("negatives", pa.list_(pa.string())),
        pa.field("score", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("language", pa.string()),
        pa.field("source", pa.string()),
        pa.field("meta", pa.string()),
    ]
)
RECORD_FIELDS: tuple[str, ...] = tuple(RECORD_SCHEMA.names)

REMOVALS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)

# Fields a record must carry for each task type, after mapping.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "retrieval": ("query", "positive"),
    "reranking": ("query", "positive"),
    "bitext": ("query", "positive"),
    "sts": ("query", "positive"),
    "pair_classification": ("query", "positive"),
    "classification": ("query", "label"),
    "clustering": ("query", "label"),
}

# Column names recognised without a --map, in order of preference.
ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("query", "question", "sentence1", "text", "anchor", "sentence", "title", "src"),
    "positive": (
        "positive",
        "answer",
        "sentence2",
        "pos",
        "passage",
        "document",
        "response",
        "tgt",
    ),
    "negatives": ("negatives", "negative", "neg", "hard_negatives"),
    "score": ("score", "similarity", "relevance"),
    "label": ("label", "category", "intent", "class"),
    "language": ("language", "lang"),
    "instruction": ("instruction", "prompt"),
    "meta": ("meta",),
}

UNKNOWN_LANGUAGE = "und"
# How a record's content id is computed. A workspace made by `kalmix init` records its
# algorithm in kalmix.toml (`[records] id`) and keeps it; one from before that setting has md5.
# xxh3-128 (the XXH3 digest, via polars-hash) hashes ten times faster than DuckDB's md5, which
# was 60% of converting a batch at ingest.
ID_ALGORITHMS = ("xxh3-128", "md5")
DEFAULT_ID_ALGORITHM = "xxh3-128"


def parse_mapping(spec: str | None) -> dict[str, str]:
    """Parse `query=question,positive=answer` into {record field: source column}."""
    if not spec:
        return {}
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise KalmixError(f"--map entry {part!r} is not FIELD=COLUMN (e.g. query=question)")
        field, column = (s.strip() for s in part.split("=", 1))
        if field not in ALIASES:
            raise KalmixError(
                f"--map names unknown record field {field!r}; fields: {', '.join(ALIASES)}"
            )
        mapping[field] = column
    return mapping


def resolve_columns(columns: list[str], task_type: str, mapping: dict[str, str]) -> dict[str, str]:
    """Decide which source column feeds each record field; fail with the fix if one is missing."""
    if task_type not in REQUIRED_FIELDS:
        raise KalmixError(f"unknown task type {task_type!r}; one of: {', '.join(TASK_TYPES)}")
    for field, column in mapping.items():
        if column not in columns:
            raise KalmixError(
                f"--map {field}={column}: the input has no column {column!r}; "
                f"its columns are: {', '.join(columns)}"
            )
    resolved = dict(mapping)
    taken = set(mapping.values())
    for field, aliases in ALIASES.items():
        if field in resolved:
            continue
        if field == "label" and task_type == "sts":
            aliases = ("label",)  # an STS label is its score, handled below
        for alias in aliases:
            if alias in columns and alias not in taken:
                resolved[field] = alias
                taken.add(alias)
                break
    if task_type in ("sts", "pair_classification") and "score" not in resolved:
        if "label" in resolved and task_type == "sts":
            resolved["score"] = resolved.pop("label")
    missing = [f for f in REQUIRED_FIELDS[task_type] if f not in resolved]
    if missing:
        free = [c for c in columns if c not in taken]
        hint = ",".join(
            f"{f}={free[i] if i < len(free) else 'COLUMN'}" for i, f in enumerate(missing)
        )
        raise KalmixError(
            f"a {task_type} dataset needs field(s) {', '.join(missing)} but the input has no "
            f"column for them; its columns are: {', '.join(columns) or '(none)'}. "
            f"Map them with e.g. --map {hint}"
        )
    return resolved


def to_records(
    table: pa.Table,
    columns: dict[str, str],
    *,
    task_type: str,
    category: str,
    source: str,
    language: str | None = None,
    instruction: str | None = None,
    id_algorithm: str = DEFAULT_ID_ALGORITHM,
) -> pa.Table:
    """Convert a source table into the record schema; unmapped columns are kept in `meta`."""
    df = pl.from_arrow(table) if table.num_rows else pl.DataFrame(schema=table.schema.names)
    if isinstance(df, pl.Series):
        df = df.to_frame()
    n = df.height
    used = set(columns.values())
    extra = [c for c in df.columns if c not in used]

    def text(field: str) -> pl.Expr:
        if field not in columns:
            return pl.lit(None, dtype=pl.String)
        col = pl.col(columns[field])
        dtype = df.schema[columns[field]]
        if dtype == pl.String:
            return col
        if isinstance(dtype, pl.Struct | pl.List):
            return col.map_batches(
                lambda s: (
                    s.struct.json_encode()
                    if isinstance(s.dtype, pl.Struct)
                    else s.cast(pl.List(pl.String)).list.join(" ")
                ),
                return_dtype=pl.String,
            )
        return col.cast(pl.String)

    if "negatives" in columns:
        neg_dtype = df.schema[columns["negatives"]]
        negatives = (
            pl.col(columns["negatives"]).cast(pl.List(pl.String))
            if isinstance(neg_dtype, pl.List)
            else pl.concat_list(pl.col(columns["negatives"]).cast(pl.String)).list.drop_nulls()
        )
    else:
        negatives = pl.lit([], dtype=pl.List(pl.String))
    if "score" in columns:
        try:
            df.select(pl.col(columns["score"]).cast(pl.Float64, strict=True))
        except Exception as err:  # noqa: BLE001 - polars raises several types here
            raise KalmixError(
                f"column {columns['score']!r} mapped to score is not numeric ({err.__class__.__name__})"
            ) from None
        score = pl.col(columns["score"]).cast(pl.Float64)
    else:
        score = pl.lit(None, dtype=pl.Float64)

    meta_parts = []
    if "meta" in columns:
        meta_parts.append(text("meta"))
    if extra:
        meta_expr = pl.struct(extra).struct.json_encode()
    elif meta_parts:
        meta_expr = meta_parts[0]
    else:
        meta_expr = pl.lit("{}")
    if extra and meta_parts:
        meta_expr = pl.struct(
            [pl.struct(extra).alias("columns"), meta_parts[0].alias("meta")]
        ).struct.json_encode()

    lang = text("language") if "language" in columns else pl.lit(language or UNKNOWN_LANGUAGE)
    if "language" in columns:
        lang = lang.fill_null(pl.lit(language or UNKNOWN_LANGUAGE))
    instr = (
        text("instruction") if "instruction" in columns else pl.lit(instruction, dtype=pl.String)
    )

    out = df.select(
        pl.lit(task_type).alias("task_type"),
        pl.lit(category).alias("category"),
        instr.alias("instruction"),
        text("query").str.strip_chars().alias("query"),
        text("positive").str.strip_chars().alias("positive"),
        negatives.alias("negatives"),
        score.alias("score"),
        text("label").alias("label"),
        lang.alias("language"),
        pl.lit(source).alias("source"),
        meta_expr.alias("meta"),
    )
    assert out.height == n
    return attach_ids(out.to_arrow(), id_algorithm)


def record_table(
    queries: list[str | None],
    *,
    negatives: list[list[str]] | None = None,
    id_algorithm: str = DEFAULT_ID_ALGORITHM,
    **fields: Any,
) -> pa.Table:
    """Records with these queries, in the schema and with ids: each other field is a list (one
    value a row) or one value for every row; a field not given is null (`negatives` empty,
    `meta` "{}"). For records made in code (personas, benchmarks, tests), not from files."""
    n = len(queries)
    columns: dict[str, Any] = {"query": queries, "negatives": negatives or [[] for _ in range(n)]}
    for name in RECORD_FIELDS:
        if name in ("id", "query", "negatives"):
            continue
        value = fields.pop(name, "{}" if name == "meta" else None)
        if isinstance(value, list):
            columns[name] = value
        else:
            columns[name] = pa.array([value] * n, RECORD_SCHEMA.field(name).type)
    if fields:
        raise KalmixError(f"not record field(s): {', '.join(sorted(fields))}")
    return attach_ids(pa.table(columns), id_algorithm)


# The md5 ids of workspaces made before xxh3-128: the same key, hashed by DuckDB.
_MD5_IDS = """
SELECT substr(md5(concat_ws(chr(31), task_type, coalesce(query, ''), coalesce(positive, ''),
       coalesce(array_to_string(negatives, chr(30)), ''), coalesce(label, ''),
       coalesce(CAST(score AS VARCHAR), ''))), 1, 16) AS id
FROM t
"""


def attach_ids(table: pa.Table, algorithm: str = DEFAULT_ID_ALGORITHM) -> pa.Table:
    """Add (or replace) `id`: a stable content hash, so identical records share an id everywhere.

    The hash covers what makes a training example (task type, texts, negatives, label, score),
    not where it came from, so the same pair in two datasets has one id. Its first 64 bits, in
    hex, are the id, whichever the algorithm (`ID_ALGORITHMS`): both are vectorised and stable
    across versions and machines, unlike polars' own hash.
    """
    if "id" in table.column_names:
        table = table.drop_columns(["id"])
    if algorithm == "xxh3-128":
        import polars_hash  # noqa: F401 - registers the `nchash` namespace

        key = pl.concat_str(
            [
                pl.col("task_type"),
                *(pl.col(c).fill_null("") for c in ("query", "positive")),
                pl.col("negatives").list.join(chr(30)).fill_null(""),
                pl.col("label").fill_null(""),
                pl.col("score").cast(pl.String).fill_null(""),
            ],
            separator=chr(31),
        )
        hashed = ("task_type", "query", "positive", "negatives", "label", "score")
        frame = pl.from_arrow(  # typed as the schema: a column of nulls arrives as `null`
            pa.table({c: table.column(c).cast(RECORD_SCHEMA.field(c).type) for c in hashed})
        )
        ids = (
            frame.select(
                key.nchash.xxh3_128(return_binary=True, byte_order="big")
                .bin.encode("hex")
                .str.slice(0, 16)
            )
            .to_series()
            .to_arrow()
        )
    elif algorithm == "md5":
        con = _duckdb()
        con.register("t", table)
        ids = con.sql(_MD5_IDS).to_arrow_table().column("id")
        con.unregister("t")
    else:
        raise KalmixError(f"unknown id algorithm {algorithm!r}; one of: {', '.join(ID_ALGORITHMS)}")
    ids = ids.cast(pa.string())
    table = table.add_column(0, pa.field("id", pa.string(), nullable=False), ids)
    return conform(table)


_local = threading.local()


def _duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per thread: connecting costs more than hashing a batch."""
    if not hasattr(_local, "con"):
        _local.con = duckdb.connect()
    return _local.con


def conform(table: pa.Table) -> pa.Table:
    """Order and cast the record columns to the schema; keep operator-added columns after them."""
    missing = [f for f in RECORD_FIELDS if f not in table.column_names]
    if missing:
        raise KalmixError(f"table is missing record field(s): {', '.join(missing)}")
    record = table.select(list(RECORD_FIELDS)).cast(RECORD_SCHEMA)
    extra = [c for c in table.column_names if c not in RECORD_FIELDS]
    for name in extra:
        record = record.append_column(table.schema.field(name), table.column(name))
    return record


def suggest(name: str, choices: list[str], n: int = 3) -> str:
    """`; did you mean a, b?` or an empty string: for unknown-name errors."""
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""
