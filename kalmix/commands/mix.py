"""`kalmix mix ...`: create, list, show, diff and materialize versioned data mixtures."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer

# catalog.mixtures (DuckDB, Arrow) is imported inside the commands (kalmix/commands/__init__.py).
from catalog.vocabulary import DATASETS_VIEW_COLUMNS, WEIGHTINGS
from corpus.console import console, print_json, print_table, progress
from corpus.errors import KalmixError
from kalmix.commands.options import JSON, command_group, open_catalog

if TYPE_CHECKING:
    from catalog.mixtures import ManifestEntry, MixtureVersion

app, register = command_group(
    "mix",
    "Versioned data mixtures: datasets chosen by a catalog query, weighted, capped, frozen.",
)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise KalmixError(f"{option} {value!r} is not NAME=VALUE")
        out[name.strip()] = rest.strip()
    return out


def _weights(values: list[str] | None) -> dict[str, float] | None:
    pairs = _pairs(values, "--weight")
    try:
        return {k: float(v) for k, v in pairs.items()} or None
    except ValueError:
        raise KalmixError(f"--weight values must be numbers: {values}") from None


def _print_manifest(entries: list[ManifestEntry], title: str) -> None:
    from catalog import mixtures

    print_table(mixtures.manifest_table(entries), title=title, width=40)
    for by in ("task_type", "category", "language"):
        print_table(mixtures.composition(entries, by), title=f"by {by.replace('_', ' ')}")


@app.command()
def create(
    name: str = typer.Argument(..., help="Mixture name; an existing name gets the next version."),
    where: str = typer.Option(
        None, "--where", help="SQL WHERE over the datasets view (columns listed above)."
    ),
    dataset: list[str] = typer.Option(
        None, "--dataset", "-d", help="Dataset NAME or NAME@vN (repeat for several)."
    ),
    spec_file: Path = typer.Option(
        None, "--spec", help="mixture.toml (format below); options given here override it."
    ),
    weighting: str = typer.Option(
        None, "--weighting", help=f"{' | '.join(WEIGHTINGS)} (default proportional)."
    ),
    tau: float = typer.Option(
        None, "--tau", help="Temperature: weight = rows^(1/tau); tau > 1 flattens toward uniform."
    ),
    weight: list[str] = typer.Option(
        None, "--weight", help="NAME=W, repeatable; implies explicit weighting."
    ),
    budget: int = typer.Option(None, "--budget", help="Total rows of the mixture."),
    cap: int = typer.Option(None, "--cap", help="At most this many rows from any dataset."),
    cap_share: float = typer.Option(
        None, "--cap-share", help="At most this share (0-1] of the total from any dataset."
    ),
    seed: int = typer.Option(None, "--seed", help="Sampling seed (default 0)."),
    allow_repeat: bool = typer.Option(
        None, "--allow-repeat/--no-repeat", help="Upsample (repeat rows) to meet the budget."
    ),
    instruction: list[str] = typer.Option(
        None, "--instruction", help="NAME=TEXT: this dataset's instruction (repeatable)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the manifest that would be made; write nothing."
    ),
    as_json: bool = JSON,
) -> None:
    """Resolve a spec to a manifest, sample the rows and register NAME@vN (immutable).

    Datasets come from --where (the latest version of each match is pinned) or an explicit
    list (--dataset NAME\\[@vN] or \\[\\[dataset]] in --spec). Datasets marked is_eval (ingested
    with --eval) are never selected. The WHERE picks whole datasets (`language` is a dataset's
    most common language); rows are never filtered here. View columns for --where:
    DATASETS_VIEW_COLUMNS.

    Weighting: proportional (rows), uniform, temperature (rows^(1/tau)), explicit (--weight).
    With --budget, each dataset gets its share of the budget, capped by --cap / --cap-share
    and (without --allow-repeat) by its rows; the excess goes to the others. Without --budget
    the shares are kept exactly and the total is the largest that needs no repeated row.
    The same spec, seed and pinned versions always give the same rows.

    A --spec file (TOML):

    where = "task_type = 'sts'"      # or \\[\\[dataset]] tables, not both
    weighting = "temperature"         # proportional | uniform | temperature | explicit
    tau = 2.0
    budget = 200000
    cap = 20000                       # rows, any dataset
    cap_share = 0.3                   # share of the total, any dataset
    seed = 13
    allow_repeat = false

    \\[\\[dataset]]
    name = "faq@v2"                   # NAME (latest) or NAME@vN
    weight = 2.0                      # any weight means explicit weighting
    cap = 5000                        # overrides the top-level cap for this dataset
    cap_share = 0.5
    instruction = "Given a question, retrieve the FAQ answer"

    Example: kalmix mix create en-zh --where "task_type in ('retrieval','sts')" --weighting temperature --tau 2 --budget 200000 --cap 20000 --seed 13
    """
    from catalog import mixtures

    base = mixtures.read_spec_toml(spec_file) if spec_file else {}
    given = {
        "where": where,
        "datasets": list(dataset) if dataset else None,
        "weighting": weighting,
        "tau": tau,
        "weights": _weights(weight),
        "budget": budget,
        "cap": cap,
        "cap_share": cap_share,
        "seed": seed,
        "allow_repeat": allow_repeat,
    }
    if where or dataset:  # a selection on the command line replaces the file's selection
        base = {k: v for k, v in base.items() if k not in ("where", "datasets")}
    merged = {**base, **{k: v for k, v in given.items() if v is not None}}
    if instruction:
        merged["instructions"] = {
            **base.get("instructions", {}),
            **_pairs(instruction, "--instruction"),
        }
    spec = mixtures.MixtureSpec.from_dict(merged)
    cat = open_catalog()
    start = time.perf_counter()
    if dry_run:
        entries = mixtures.plan_mixture(cat, spec)
        if as_json:
            print_json([asdict(e) for e in entries])
            return
        total = sum(e.rows_taken for e in entries)
        _print_manifest(entries, f"plan for {name}: {len(entries)} datasets, {total:,} rows")
        return
    planned = sum(e.rows_taken for e in mixtures.plan_mixture(cat, spec))
    with progress(transient=True) as bar:
        task = bar.add_task(f"sampling {name}", total=planned)
        mv = mixtures.create_mixture(cat, name, spec, progress=lambda n: bar.advance(task, n))
    if as_json:
        print_json(_as_dict(mv))
        return
    _print_manifest(mv.entries, f"{mv.ref}: {len(mv.entries)} datasets, {mv.rows:,} rows")
    available = sum(e.rows_available for e in mv.entries)
    console.print(
        f"mix create: {len(mv.entries)} datasets -> {mv.ref}: rows {available} -> {mv.rows}; "
        f"hash {mv.content_hash[:12]}; {time.perf_counter() - start:.1f}s"
    )


create.__doc__ = (create.__doc__ or "").replace("DATASETS_VIEW_COLUMNS", DATASETS_VIEW_COLUMNS)


def _as_dict(mv: MixtureVersion) -> dict:
    from catalog import mixtures

    return {
        "mixture": str(mv.ref),
        "rows": mv.rows,
        "content_hash": mv.content_hash,
        "created_at": mv.created_at,
        "ids_path": str(mv.ids_path),
        "spec": mv.spec,
        "entries": [asdict(e) for e in mv.entries],
        **{f"by_{by}": mixtures.composition(mv.entries, by).to_pylist() for by in _BY},
    }


_BY = ("task_type", "category", "language")


@app.command("list")
def list_(as_json: bool = JSON) -> None:
    """List mixtures with their number of versions and the latest version's size.

    Example: kalmix mix list
    """
    from catalog import mixtures

    table = mixtures.list_mixtures(open_catalog())
    if as_json:
        print_json(table)
    elif table.num_rows == 0:
        console.print("no mixtures yet: make one with kalmix mix create")
    else:
        print_table(table, title=f"{table.num_rows} mixtures")


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME (latest version) or NAME@vN."),
    as_json: bool = JSON,
) -> None:
    """Show a mixture version: spec, manifest, and composition by task type, category, language.

    Example: kalmix mix show en-zh@v1
    """
    from catalog import mixtures

    mv = mixtures.resolve_mixture(open_catalog(), ref)
    if as_json:
        print_json(_as_dict(mv))
        return
    spec = {k: v for k, v in mv.spec.items() if v not in (None, [], {}, False) and k != "search"}
    if spec.get("weighting") != "temperature":
        spec.pop("tau", None)
    console.print(
        f"[bold]{mv.ref}[/]  rows {mv.rows:,}  datasets {len(mv.entries)}  "
        f"hash {mv.content_hash[:12]}  created {mv.created_at:%Y-%m-%d %H:%M}"
    )
    console.print(f"spec: {json.dumps(spec, ensure_ascii=False)}", markup=False)
    if mv.spec.get("search"):
        from kalmix.commands.search import print_search

        print_search(mv.spec["search"])
    _print_manifest(mv.entries, "manifest")


@app.command()
def diff(
    a: str = typer.Argument(..., help="First mixture, NAME@vN."),
    b: str = typer.Argument(..., help="Second mixture, NAME@vN."),
    as_json: bool = JSON,
    all_rows: bool = typer.Option(False, "--all", help="Also list unchanged datasets."),
) -> None:
    """Compare two mixture versions: datasets added and removed, version and row changes.

    Example: kalmix mix diff en-zh@v1 en-zh@v2
    """
    from catalog import mixtures

    table = mixtures.diff_mixtures(open_catalog(), a, b)
    if as_json:
        print_json(table)
        return
    rows = table.to_pylist()
    counts = {c: sum(r["change"] == c for r in rows) for c in ("added", "removed", "changed")}
    shown = [r for r in rows if all_rows or r["change"] != "same"]
    if shown:
        print_table(table.from_pylist(shown, schema=table.schema), title=f"{a} -> {b}")
    before, after = sum(r["rows_from"] for r in rows), sum(r["rows_to"] for r in rows)
    console.print(
        f"added {counts['added']}, removed {counts['removed']}, changed {counts['changed']}, "
        f"same {len(rows) - sum(counts.values())}; rows {before:,} -> {after:,} "
        f"({after - before:+,})"
    )


@app.command()
def materialize(
    ref: str = typer.Argument(..., help="NAME@vN (or NAME for the latest)."),
    out: Path = typer.Option(..., "--out", help="New folder for the shards."),
    rows_per_shard: int = typer.Option(100_000, "--rows-per-shard", help="Rows per shard."),
) -> None:
    """Write a mixture version as training shards in a deterministic shuffled order.

    Shards are Parquet with the record schema plus `_dataset`; the same version always gives
    the same bytes. A _mixture.json in the folder names the version and its content hash.

    Example: kalmix mix materialize en-zh@v1 --out shards/en-zh-v1
    """
    from catalog import mixtures

    cat = open_catalog()
    mv = mixtures.resolve_mixture(cat, ref)
    start = time.perf_counter()
    with progress(transient=True) as bar:
        task = bar.add_task(f"materializing {mv.ref}", total=mv.rows)
        files = mixtures.materialize(
            cat, mv, out, rows_per_shard=rows_per_shard, progress=lambda n: bar.advance(task, n)
        )
    console.print(
        f"mix materialize: {mv.ref} -> {out}: rows {mv.rows} -> {mv.rows} in {len(files)} "
        f"shards; {time.perf_counter() - start:.1f}s"
    )
