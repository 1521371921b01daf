"""Decontamination: remove training records that overlap evaluation data.

A training record is contaminated by an evaluation item (one text: an STS sentence, a
classification text, a retrieval query or passage) when one of its fields (`query`,
`positive`, each of `negatives`)

- equals the item once both are normalised (NFKC, case) and stripped of punctuation and
  spaces ("Jaguar to create 1,100 jobs" = "jaguar to create 1100 jobs"): `contaminated_exact`;
- or contains at least `threshold` of the item's n-grams: `contaminated_ngram`. N-grams are
  word n-grams over token-normalised text (punctuation dropped), or character n-grams for
  Chinese/Japanese/Korean and mixed text, decided per text by script. An item shorter than
  `ngram` units is one n-gram, itself: it must appear whole (after normalisation) inside the
  field, which catches copies with changed case, punctuation or spacing and items embedded in
  longer text. Items shorter than `min_words` words (`min_chars` CJK characters) are matched
  exactly only: a three-word query inside a training text is no evidence of a leak.

Why not fuzzier: on Banking77, half of the test queries already share about 80% of their words
with some training query (measured when this was written), so a one-word edit of a 9-word
query cannot be told apart from a different query about the same thing. Long items
(passages) tolerate edits, since most of their 13-grams survive a few changed words.

Each removal records the item it matched (`eval`: source:row:column, and its text), the field,
the kind of match and the overlap. Matching is hash joins in polars over n-gram hashes
(`corpus.text.span_hashes`), training texts in bounded batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from corpus.errors import KalmixError
from corpus.operator import Operator, OpResult, removal_rows
from corpus.readers import FORMATS, detect_format, iter_tables
from corpus.schema import ALIASES, suggest
from corpus.text import ngram_spans, normalize, shingle_text, span_hashes

REASON_EXACT = "contaminated_exact"
REASON_NGRAM = "contaminated_ngram"
TEXT_COLUMNS = tuple(dict.fromkeys(ALIASES["query"] + ALIASES["positive"] + ALIASES["negatives"]))
ITEMS_SCHEMA = pa.schema([pa.field("item", pa.string()), pa.field("text", pa.string())])


@dataclass(frozen=True)
class DecontaminateConfig:
    fields: tuple[str, ...] = ("query", "positive", "negatives")
    ngram: int = 13
    threshold: float = 0.5
    min_words: int = 6
    min_chars: int = 10
    batch_texts: int = 50_000

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise KalmixError(f"--threshold must be in (0, 1], got {self.threshold}")
        if not 1 <= self.ngram <= 64:
            raise KalmixError(f"--ngram must be between 1 and 64, got {self.ngram}")

    def params(self) -> dict:
        return {
            "fields": list(self.fields),
            "ngram": self.ngram,
            "threshold": self.threshold,
            "min_words": self.min_words,
            "min_chars": self.min_chars,
        }


# --- evaluation items ------------------------------------------------------------------------


def items_from_table(
    table: pa.Table, source: str, columns: Sequence[str] | None = None
) -> pa.Table:
    """Evaluation items (`item` = source:row:column, `text`) from the text columns of a table.

    Without `columns`, the columns whose names the record mapping knows as query, positive or
    negatives (text, sentence1, question, passage, ...) are used; other columns (labels,
    scores, ids) are not evaluation text.
    """
    names = columns or [c for c in table.column_names if c.lstrip("\ufeff") in TEXT_COLUMNS]
    parts = []
    frame = pl.from_arrow(table.select(list(names)), rechunk=False) if names else None
    for name in names:
        dtype = table.schema.field(name).type
        col = pl.col(name)
        if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
            exploded = frame.select(
                row=pl.int_range(pl.len()), text=col.cast(pl.List(pl.String))
            ).explode("text")
        elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
            exploded = frame.select(row=pl.int_range(pl.len()), text=col)
        else:
            continue
        parts.append(
            exploded.filter(pl.col("text").str.strip_chars().str.len_chars() > 0).select(
                item=pl.format(
                    "{}:{}:{}", pl.lit(source), pl.col("row"), pl.lit(name.lstrip("\ufeff"))
                ),
                text=pl.col("text").str.strip_chars(),
            )
        )
    if not parts:
        return ITEMS_SCHEMA.empty_table()
    return pl.concat(parts).to_arrow().cast(ITEMS_SCHEMA)


def items_from_path(path: Path | str) -> pa.Table:
    """Items from an evaluation file, or from every data file under a folder (recursively).

    In a folder, training splits (`train.csv`, `en-train.jsonl`, ...) are skipped: they sit
    beside the test splits in most benchmark folders but are not evaluation data. Files without
    text columns (manifests, score tables) contribute nothing.
    """
    path = Path(path)
    if not path.exists():
        raise KalmixError(f"evaluation data not found: {path}")
    if path.is_file():
        files = [path]
        root = path.parent
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and _eval_file(p))
        root = path
    parts = []
    for f in files:
        table = pa.concat_tables(list(iter_tables(f))) if f.stat().st_size else None
        if table is not None and table.num_rows:
            parts.append(items_from_table(table, str(f.relative_to(root))))
    items = pa.concat_tables(parts) if parts else ITEMS_SCHEMA.empty_table()
    if items.num_rows == 0:
        raise KalmixError(
            f"no evaluation text found in {path}: expected CSV/JSONL/Parquet files with a text "
            f"column ({', '.join(TEXT_COLUMNS[:6])}, ...)"
        )
    return items


def _eval_file(path: Path) -> bool:
    """A data file that is not a training split (`train.csv`, `xx-train.jsonl`, ...)."""
    if "train" in path.stem.lower().replace("-", "_").split("_") or path.stem.lower() == "train":
        return False
    try:
        return detect_format(path) in FORMATS
    except KalmixError:
        return False


def items_from_mteb(task_name: str) -> pa.Table:
    """Items from the evaluation splits of an mteb task whose data is in the local HF cache.

    Nothing is downloaded: the Hugging Face libraries are put in offline mode first, and a
    missing dataset is a `KalmixError` saying how to fetch it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import mteb

    try:
        task = mteb.get_task(task_name)
    except (KeyError, ValueError):
        names = [t.metadata.name for t in mteb.get_tasks()]
        raise KalmixError(
            f"{task_name!r} is neither a file, a registered dataset nor an mteb task"
            f"{suggest(task_name, names)}"
        ) from None
    try:
        task.load_data()
    except (OSError, ValueError) as err:
        dataset = task.metadata.dataset.get("path", task_name)
        raise KalmixError(
            f"mteb task {task_name} needs dataset {dataset} in the local Hugging Face cache "
            f'({err.__class__.__name__}). On a machine with access run: python -c "import mteb; '
            f"mteb.get_task('{task_name}').load_data()\" and copy ~/.cache/huggingface here "
            "(or set HF_HOME to it)"
        ) from None
    splits = set(task.metadata.eval_splits)
    parts = [
        items_from_table(table, f"{task_name}/{where}")
        for where, table in _hf_tables(task.dataset, splits)
    ]
    items = pa.concat_tables(parts) if parts else ITEMS_SCHEMA.empty_table()
    if items.num_rows == 0:
        raise KalmixError(f"mteb task {task_name} has no text in its splits {sorted(splits)}")
    return items


def _hf_tables(obj, splits: set[str], where: str = "") -> Iterable[tuple[str, pa.Table]]:
    """(path, Arrow table) of every `datasets.Dataset` inside nested dicts, eval splits only.

    mteb nests datasets as {split: Dataset}, {subset: {split: Dataset}} or, for retrieval,
    {subset: {split: {"corpus": ..., "queries": ...}}}; where a level names splits, only the
    evaluation splits are followed.
    """
    if hasattr(obj, "data") and hasattr(obj, "column_names") and hasattr(obj.data, "table"):
        yield where.strip("/"), obj.data.table
        return
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        keys = list(obj.keys())
        chosen = [k for k in keys if k in splits] or keys
        for key in chosen:
            yield from _hf_tables(obj[key], splits, f"{where}/{key}")


# --- matching ---------------------------------------------------------------------------------


def _field_texts(table: pa.Table, fields: Sequence[str]) -> pl.DataFrame:
    """(row, field, text) for every non-empty text of the chosen fields, negatives exploded."""
    parts = []
    for name in fields:
        if name not in table.column_names:
            raise KalmixError(
                f"field {name!r} does not exist; columns: {', '.join(table.column_names)}"
            )
        dtype = table.schema.field(name).type
        frame = pl.from_arrow(table.select([name]), rechunk=False)
        if pa.types.is_list(dtype):
            part = frame.select(row=pl.int_range(pl.len()), text=pl.col(name)).explode("text")
        elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
            part = frame.select(row=pl.int_range(pl.len()), text=pl.col(name))
        else:
            raise KalmixError(f"field {name!r} is not text ({dtype})")
        parts.append(
            part.filter(pl.col("text").str.len_chars() > 0).with_columns(field=pl.lit(name))
        )
    if not parts:
        return pl.DataFrame(schema={"row": pl.Int64, "text": pl.String, "field": pl.String})
    return pl.concat(parts).with_columns(pl.col("row").cast(pl.Int64))


@dataclass
class _EvalGrams:
    grams: pl.DataFrame  # item, hash (distinct)
    total: np.ndarray  # distinct n-grams per item
    sizes: list[int]  # n-gram sizes a training text must be cut into


def _eval_grams(texts: pa.Array, config: DecontaminateConfig) -> _EvalGrams:
    norm, char = shingle_text(texts)
    units = ngram_spans(norm, char, 1).counts
    eligible = np.where(char, units >= config.min_chars, units >= config.min_words)
    spans = ngram_spans(norm, char, config.ngram)
    keep = eligible[spans.doc]
    grams = pl.DataFrame(
        {
            "item": spans.doc[keep],
            "hash": span_hashes(spans.data, spans.start[keep], spans.end[keep]),
        }
    ).unique()
    total = np.bincount(grams["item"].to_numpy(), minlength=len(texts))
    short = np.unique(units[eligible & (units < config.ngram)]).tolist()
    return _EvalGrams(grams, total, sorted({*short, config.ngram}))


def _ngram_matches(texts: pa.Array, eval_grams: _EvalGrams, threshold: float) -> pl.DataFrame:
    """(text, item, overlap) for each text holding >= threshold of an item's distinct n-grams."""
    norm, char = shingle_text(texts)
    parts = []
    for size in eval_grams.sizes:
        spans = ngram_spans(norm, char, size)
        hashes = span_hashes(spans.data, spans.start, spans.end)
        parts.append(pl.DataFrame({"text": spans.doc, "hash": hashes}))
    totals = pl.DataFrame(
        {"item": np.arange(eval_grams.total.size, dtype=np.int64), "total": eval_grams.total}
    )
    return (
        pl.concat(parts)
        .unique()
        .join(eval_grams.grams, on="hash")
        .group_by("text", "item")
        .agg(shared=pl.len())
        .join(totals, on="item")
        .select("text", "item", overlap=pl.col("shared") / pl.col("total"))
        .filter(pl.col("overlap") >= threshold)
    )


def _exact_key(texts: pa.Array) -> pa.Array:
    """Token-normalised text without spaces: "1,100 jobs" and "1100 jobs" are the same item."""
    return pc.replace_substring(normalize(texts, tokens=True), " ", "")


@dataclass
class Decontaminate(Operator):
    """The decontamination operator (`table -> OpResult`) against a table of evaluation items."""

    items: pa.Table
    config: DecontaminateConfig = DecontaminateConfig()

    def params(self) -> dict:
        """The settings (where the items came from is the caller's to add)."""
        return self.config.params()

    def __post_init__(self) -> None:
        if self.items.num_rows == 0:
            raise KalmixError("no evaluation items to decontaminate against")
        texts = self.items.column("text").combine_chunks()
        exact = pl.DataFrame({"norm": pl.Series(_exact_key(texts)), "item": np.arange(len(texts))})
        self._exact = exact.filter(pl.col("norm") != "").unique(subset="norm", keep="first")
        self._grams = _eval_grams(texts, self.config)

    def _matches(self, batch: pl.DataFrame) -> pl.DataFrame:
        """(row, field, item, overlap, exact) for one batch of (row, field, text)."""
        texts = batch["text"].to_arrow()
        exact = (
            pl.DataFrame({"text": np.arange(batch.height), "norm": pl.Series(_exact_key(texts))})
            .join(self._exact, on="norm")
            .select("text", "item", overlap=pl.lit(1.0), exact=pl.lit(True))
        )
        ngram = _ngram_matches(texts, self._grams, self.config.threshold).with_columns(
            exact=pl.lit(False)
        )
        where = (
            batch.select("row", "field")
            .with_row_index("text")
            .with_columns(pl.col("text").cast(pl.Int64))
        )
        return pl.concat([exact, ngram.cast({"text": pl.Int64})], how="vertical_relaxed").join(
            where, on="text"
        )

    def __call__(self, table: pa.Table) -> OpResult:
        start = time.perf_counter()
        cfg = self.config
        fields = _field_texts(table, cfg.fields)
        found = [
            self._matches(fields.slice(lo, cfg.batch_texts))
            for lo in range(0, fields.height, cfg.batch_texts)
        ]
        matches = pl.concat(found) if found else pl.DataFrame()
        keep = np.ones(table.num_rows, dtype=bool)
        reasons: list[str] = []
        details: list[dict] = []
        dropped = np.zeros(0, dtype=np.int64)
        if matches.height:
            best = (
                matches.sort(["row", "exact", "overlap"], descending=[False, True, True])
                .group_by("row", maintain_order=True)
                .agg(pl.all().first(), items=pl.col("item").n_unique())
            )
            dropped = best["row"].to_numpy().astype(np.int64)
            keep[dropped] = False
            eval_ids = self.items.column("item").to_pylist()
            eval_texts = self.items.column("text").to_pylist()
            for r in best.iter_rows(named=True):
                reasons.append(REASON_EXACT if r["exact"] else REASON_NGRAM)
                details.append(
                    {
                        "eval": eval_ids[r["item"]],
                        "eval_text": eval_texts[r["item"]][:300],
                        "field": r["field"],
                        "match": "exact" if r["exact"] else "ngram",
                        "overlap": round(float(r["overlap"]), 4),
                        "items_matched": r["items"],
                    }
                )
        removed = removal_rows(table, dropped, reasons, details)
        stats = {
            "rows": table.num_rows,
            "eval_items": self.items.num_rows,
            "texts_checked": fields.height,
            "contaminated_exact": reasons.count(REASON_EXACT),
            "contaminated_ngram": reasons.count(REASON_NGRAM),
            "seconds": round(time.perf_counter() - start, 3),
        }
        return OpResult(table.filter(pa.array(keep)), removed, stats)
