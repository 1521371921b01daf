"""`kalmix init` and `kalmix ingest`: make a workspace, and bring a file into it as a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

# The catalog and ingest are imported inside the commands (kalmix/commands/__init__.py says why).
from corpus.console import console
from kalmix.commands.options import open_catalog


def init(
    path: Path = typer.Argument(..., help="Folder to create (or complete)."),
    data: str = typer.Option(
        None,
        "--data",
        help="Where dataset versions go: a folder, or a pyarrow/fsspec URI such as "
        "s3://bucket/prefix that Ray workers on other machines can reach (default: PATH/data; "
        "sets [storage] data in kalmix.toml).",
    ),
) -> None:
    """Create a workspace: catalog.duckdb, data/, runs/, cache/ and kalmix.toml.

    Example: kalmix init ws/ && export KALMIX_HOME=ws
    """
    from catalog.db import Catalog
    from catalog.workspace import Workspace

    ws = Workspace.init(path, data)
    with Catalog.open(ws).read() as con:
        n = con.execute("SELECT count(*) FROM categories").fetchall()[0][0]
    where = "" if ws.data_root == ws.data_dir else f"; dataset versions in {ws.data_root}"
    console.print(f"workspace ready at {ws.root} ({n} task categories{where})")


def ingest(
    file: str = typer.Argument(
        ...,
        help="JSONL (.gz/.zst), Parquet, CSV/TSV, or a `datasets` save_to_disk folder; a file may "
        "also be a URI (s3://bucket/faq.jsonl.gz, any pyarrow/fsspec filesystem).",
    ),
    name: str = typer.Option(
        ..., "--name", help="Dataset name; an existing name gets a new version."
    ),
    category: str = typer.Option(
        ..., "--category", help="Task category (kalmix catalog categories)."
    ),
    task_type: str = typer.Option(None, "--task-type", help="Default: the category's task type."),
    mapping: str = typer.Option(
        None, "--map", help="Record field = source column, e.g. query=question,positive=answer."
    ),
    language: str = typer.Option(
        None, "--language", help="Language of rows without one (ISO 639-1)."
    ),
    fmt: str = typer.Option(
        None, "--format", help="jsonl, parquet, csv, tsv or hf (default: from the name)."
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Skip malformed lines; their count goes in the stats."
    ),
    split: str = typer.Option(None, "--split", help="Split of a `datasets` DatasetDict folder."),
    is_eval: bool = typer.Option(
        False, "--eval", help="Mark as evaluation data (never mixed into training)."
    ),
) -> None:
    """Ingest a file as a new immutable dataset version.

    Columns are mapped to the record schema by common names (question/answer, sentence1/
    sentence2, text/label, ...) or with --map; unmapped columns are kept in `meta`.

    Example: kalmix ingest faq.jsonl --name faq --category faq-retrieval --map query=q,positive=a
    """
    from kalmix.ingest import ingest as run_ingest

    cat = open_catalog()
    with console.status(f"ingesting {file} ...") as status:
        result = run_ingest(
            cat,
            file,
            name=name,
            category=category,
            task_type=task_type,
            mapping=mapping,
            language=language,
            fmt=fmt,
            skip_invalid=skip_invalid,
            split=split,
            is_eval=is_eval,
            progress=lambda rows: status.update(f"ingesting {file}: {rows:,} rows"),
        )
    skipped = f", {result.invalid} invalid skipped" if result.invalid else ""
    console.print(
        f"ingest: {file} -> {result.ref}: {result.rows:,} rows{skipped}; {result.seconds:.1f}s"
    )


def register(app: typer.Typer) -> None:
    """Add `init` and `ingest` to the `kalmix` app."""
    app.command("init")(init)
    app.command("ingest")(ingest)
