"""`kalmix catalog ...`: browse categories, datasets and versions; check the workspace."""

from __future__ import annotations

import json

import typer

# The catalog and Arrow are imported inside the commands (kalmix/commands/__init__.py says why).
from corpus.console import console, print_json, print_table
from corpus.errors import KalmixError
from kalmix.commands.options import JSON, command_group, open_catalog

app, register = command_group(
    "catalog",
    "Browse the catalog: task categories, datasets, versions and lineage.",
)


@app.command()
def categories(
    task_type: str = typer.Option(
        None, "--task-type", "-t", help="Only this task type, e.g. retrieval."
    ),
    as_json: bool = JSON,
) -> None:
    """List the task categories with their datasets and rows.

    Example: kalmix catalog categories --task-type retrieval
    """
    from catalog import queries

    table = queries.categories(open_catalog(), task_type)
    if as_json:
        print_json(table)
        return
    print_table(table.drop_columns(["instruction"]), title=f"{table.num_rows} categories", width=50)


@app.command()
def datasets(
    where: str = typer.Option(
        None, "--where", help="SQL WHERE over the datasets view, e.g. \"language = 'zh'\"."
    ),
    as_json: bool = JSON,
) -> None:
    """List datasets (latest versions), optionally filtered with SQL.

    Columns of the view: name, category, task_type, domain, language, languages, rows,
    latest_version, tags, source, is_eval, last_operation, stats, created_at, updated_at.

    Example: kalmix catalog datasets --where "task_type = 'sts' and rows > 1000"
    """
    from catalog import queries

    table = queries.datasets(open_catalog(), where)
    if as_json:
        print_json(table)
        return
    if table.num_rows == 0:
        console.print("no datasets" + (" match" if where else " yet: add one with kalmix ingest"))
        return
    print_table(table, title=f"{table.num_rows} datasets")


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME or NAME@vN."),
    rows: int = typer.Option(3, "--rows", "-n", help="Sample rows to print."),
    as_json: bool = JSON,
) -> None:
    """Show a dataset version: lineage, stats, removals by reason and sample rows.

    Example: kalmix catalog show faq@v2
    """
    import pyarrow as pa

    from catalog import queries, versions

    cat = open_catalog()
    chain = versions.lineage(cat, ref)
    info = chain[0]
    removals = queries.removals_summary(cat, info.dataset, info.version)
    sample = info.read().slice(0, rows) if info.files else pa.table({})
    if as_json:
        print_json(
            {
                "dataset": info.dataset,
                "version": info.version,
                "rows": info.rows,
                "category": info.category,
                "task_type": info.task_type,
                "content_hash": info.content_hash,
                "operation": info.operation,
                "params": info.params,
                "stats": info.stats,
                "lineage": [
                    {
                        "ref": str(v.ref),
                        "operation": v.operation,
                        "rows": v.rows,
                        "params": v.params,
                    }
                    for v in chain
                ],
                "removals": removals.to_pylist(),
                "sample": sample.to_pylist(),
            }
        )
        return
    console.print(
        f"[bold]{info.ref}[/]  {info.task_type} / {info.category}  rows {info.rows}  "
        f"hash {info.content_hash[:12]}"
    )
    lineage = pa.table(
        {
            "version": [str(v.ref) for v in chain],
            "operation": [v.operation for v in chain],
            "rows": [v.rows for v in chain],
            "removed": [v.stats.get("removed", 0) for v in chain],
            "params": [
                json.dumps(
                    {k: p for k, p in v.params.items() if p not in (None, False)}, default=str
                )
                for v in chain
            ],
        }
    )
    print_table(lineage, title="lineage (newest first)", width=70)
    stats = info.stats
    console.print(f"languages: {stats.get('languages')}")
    console.print(f"chars: {json.dumps(stats.get('chars'))}")
    if removals.num_rows:
        print_table(removals, title="removed in this version, by reason", width=80)
    if sample.num_rows:
        cols = [
            c
            for c in ("id", "query", "positive", "negatives", "score", "label", "language")
            if c in sample.column_names
        ]
        print_table(sample.select(cols), title="sample rows", width=60)


@app.command()
def check(
    fix: bool = typer.Option(False, "--fix", help="Delete orphan and stale staging folders."),
) -> None:
    """Find version folders without a catalog row (a crash mid-commit) and stale staging folders.

    Example: kalmix catalog check --fix
    """
    from catalog import versions

    report = versions.check(open_catalog(), fix=fix)
    for path in report.orphans:
        console.print(
            f"orphan version folder (no catalog row): {path}" + (" — removed" if fix else "")
        )
    for path in report.stale_staging:
        console.print(f"stale staging folder (writer died): {path}" + (" — removed" if fix else ""))
    for ref in report.missing:
        console.print(f"[red]missing data files for {ref}[/]")
    if not (report.orphans or report.stale_staging or report.missing):
        console.print("catalog and data folders agree")
    elif report.missing:
        raise KalmixError(f"{len(report.missing)} version(s) have missing files")
