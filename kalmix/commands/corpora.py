"""`kalmix corpora list|add`: real raw corpora from Debian packages, registered as datasets.

The corpora themselves (parsers, registry, installation check) are `corpus.corpora`; this is the
glue that installs a missing package when allowed, and feeds the corpus' tables through the one
ingest path (`kalmix.ingest.ingest_tables`), so that a corpus is a dataset like any ingested
file: one version, operation `ingest`, its source (`debian:wordnet-base`), package version,
licence, limit and seed in the version's params.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table

# The corpora, the catalog and ingest are imported inside the commands
# (kalmix/commands/__init__.py says why).
from corpus.console import console, print_json
from kalmix.commands.options import JSON, command_group, open_catalog

if TYPE_CHECKING:
    from catalog.db import Catalog
    from corpus import corpora
    from kalmix.ingest import IngestResult

# The listing keeps identifiers on one line and wraps only free text, so it fits 140 columns.
LIST_COLUMNS = ("name", "task type", "category", "languages", "licence", "package", "installed")
LIST_COLUMNS += ("rows",)
WRAPPED = {"languages", "licence"}

app, register = command_group(
    "corpora",
    "Real raw corpora from Debian packages (WordNet, GCIDE, FOLDOC, FreeDict, man pages, "
    "package descriptions, Python docstrings) as datasets.",
)


def describe(corpus: corpora.Corpus, count_rows: bool = True) -> dict[str, Any]:
    """One corpus as a plain dict (the `--json` listing)."""
    installed = corpus.installed()
    return {
        "name": corpus.name,
        "task_type": corpus.task_type,
        "category": corpus.category,
        "languages": list(corpus.languages),
        "licence": corpus.licence,
        "package": corpus.package or corpus.provider.split(":", 1)[1],
        "installed": installed,
        "rows": corpus.rows() if count_rows and installed else None,
        "source": corpus.provider,
        "description": corpus.description,
    }


def add_corpus(
    cat: Catalog,
    corpus: corpora.Corpus,
    *,
    name: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[IngestResult, Counter]:
    """Register `corpus` (a seeded sample of `limit` rows, or all) as a new dataset version.

    The caller has made sure it is installed (`corpora.ensure_installed`). Returns the result
    and what the parser counted (pages without NAME, docstrings without a body, ...).
    """
    from corpus.corpora.common import rerooted, system_root
    from kalmix.ingest import ingest_tables

    notes: Counter = Counter()
    params: dict[str, Any] = {
        "corpus": corpus.name,
        "package": corpus.package,
        "package_version": corpus.package_version(),
        "licence": corpus.licence,
        "limit": limit,
        "seed": seed,
    }
    if rerooted():
        params["root"] = str(system_root())
    result = ingest_tables(
        cat,
        corpus.read(limit, seed, notes),
        name=name or corpus.name,
        category=corpus.category,
        task_type=corpus.task_type,
        source=corpus.provider,
        what=f"corpus {corpus.name}",
        params=params,
        extra_stats=lambda: {"parse_notes": dict(notes)},
        progress=progress,
    )
    return result, notes


@app.command("list")
def list_corpora(
    as_json: bool = JSON,
) -> None:
    """List the raw corpora: task type, category, languages, licence, package, installed?

    `rows` is filled where counting costs no more than reading an index (dictionaries, WordNet
    synsets); the others need a full parse, which `corpora add` does.

    Example: kalmix corpora list
    """
    from corpus import corpora

    with console.status("checking installed corpora ..."):
        found = [describe(c) for c in corpora.registry().values()]
    if as_json:
        print_json(found)
        return
    table = Table(
        title="raw corpora (kalmix corpora add NAME)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in LIST_COLUMNS:
        justify = "right" if column == "rows" else "left"
        table.add_column(column, no_wrap=column not in WRAPPED, justify=justify)
    for c in found:
        langs = c["languages"]
        table.add_row(
            c["name"],
            c["task_type"],
            c["category"],
            ", ".join(langs[:2]) + (f" +{len(langs) - 2}" if len(langs) > 2 else ""),
            c["licence"],
            c["package"],
            "yes" if c["installed"] else "no",
            f"{c['rows']:,}" if c["rows"] is not None else "",
        )
    console.print(table)
    console.print(summary(found))


def summary(found: list[dict[str, Any]]) -> str:
    """One line on what is installed: the `rows` total is a lower bound (see `list`)."""
    from corpus.corpora.common import ROOT_ENV, rerooted, system_root

    installed = [c for c in found if c["installed"]]
    counted = [c["rows"] for c in installed if c["rows"] is not None]
    languages = {lang for c in installed for lang in c["languages"]}
    where = f" under {ROOT_ENV}={system_root()}" if rerooted() else ""
    return (
        f"{len(installed)} of {len(found)} corpora installed{where}: "
        f"{len({c['category'] for c in installed})} categories, {len(languages)} languages, "
        f"{sum(counted):,} rows counted in {len(counted)} (the other {len(installed) - len(counted)}"
        " need a full parse)"
    )


@app.command("add")
def add(
    corpus_name: str = typer.Argument(..., metavar="NAME", help="A corpus of `corpora list`."),
    limit: int = typer.Option(
        None,
        "--limit",
        min=1,
        help="Register a seeded sample of N rows spread over the whole source (default: all).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit sample."),
    dataset: str = typer.Option(
        None,
        "--name",
        help="Dataset name (default: the corpus name); an existing one gets a new version.",
    ),
) -> None:
    """Register a raw corpus as a dataset version (installing its Debian package if needed).

    A missing package is installed with apt-get when running as root; otherwise the command
    fails with the one line to run. The text is parsed into plain text and not cleaned: dedup,
    langid and the consistency filter are the next steps.

    Example: kalmix corpora add wordnet-gloss --limit 20000
    """
    from corpus import corpora

    corpus = corpora.get(corpus_name)
    cat = open_catalog()
    with console.status(f"{corpus.name}: checking {corpus.package or corpus.provider} ...") as st:
        corpora.ensure_installed(corpus, status=st.update)
        st.update(f"{corpus.name}: reading {corpus.provider} ...")
        result, notes = add_corpus(
            cat,
            corpus,
            name=dataset,
            limit=limit,
            seed=seed,
            progress=lambda rows: st.update(f"{corpus.name}: {rows:,} rows written"),
        )
    console.print(
        f"corpora add: {corpus.name} ({corpus.provider}) -> {result.ref}: {result.rows:,} rows; "
        f"{result.seconds:.1f}s"
    )
    if notes:
        console.print("  " + "; ".join(f"{reason}: {n:,}" for reason, n in notes.most_common()))
