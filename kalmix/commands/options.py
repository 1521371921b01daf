"""What the commands share: the one list parser, the option declarations several commands take,
and a decorator that hands a command a group of options as one value.

Every `kalmix` command parses a comma list, a `[COLUMN=]V1,V2` priority and a list of numbers
the same way, so that one spelling works everywhere and a bad value gets the same error.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from corpus.errors import KalmixError

if TYPE_CHECKING:
    from catalog.db import Catalog


def command_group(
    name: str, help: str, **settings: Any
) -> tuple[typer.Typer, Callable[[typer.Typer], None]]:
    """A command group (`kalmix NAME ...`, its help shown when called bare) and the `register`
    that mounts it on the root app, as every command module has."""
    group = typer.Typer(help=help, no_args_is_help=True, **settings)

    def register(root: typer.Typer) -> None:
        root.add_typer(group, name=name)

    register.__doc__ = f"Add the `{name}` group to the `kalmix` app."
    return group, register


def split_list(text: str | None) -> tuple[str, ...]:
    """`"a, b,,c"` -> `("a", "b", "c")`; None or blank -> `()`."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def numbers(text: str | None, option: str, kind: type = float) -> tuple[Any, ...] | None:
    """A comma list of numbers (`kind` int or float); None when the option was not given."""
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in split_list(text))
    except ValueError:
        example = "384,256,128" if kind is int else "0.6,0.4"
        noun = "integers" if kind is int else "numbers"
        raise KalmixError(f"{option} takes comma-separated {noun}, e.g. {example}") from None


def priority(spec: str | None) -> tuple[str, tuple[str, ...]]:
    """`--priority [COLUMN=]V1,V2` -> (column, values): rows whose COLUMN value comes earlier
    win a duplicate cluster. The column defaults to `source`; `dataset` means the dataset a
    row came from (with --across)."""
    if not spec:
        return "source", ()
    column, sep, values = spec.partition("=")
    if not sep:
        column, values = "source", spec
    column = column.strip()
    if not column or not split_list(values):
        raise KalmixError(f"--priority {spec!r} is not [COLUMN=]V1,V2 (e.g. source=curated,web)")
    return ("_dataset" if column == "dataset" else column), split_list(values)


PRIORITY_HELP = (
    "[COLUMN=]V1,V2: rows whose COLUMN value comes first win a cluster before the --prefer rule "
    "(COLUMN defaults to source), e.g. curated,web or source=curated,web, or dataset=a,b with "
    "--across."
)
ACROSS_HELP = (
    "SQL WHERE over the datasets view: work on all those datasets together, e.g. "
    "\"task_type = 'retrieval'\"; one new version per dataset that lost rows."
)
JSON = typer.Option(False, "--json", help="Print JSON (for scripts) instead of tables.")
PRIORITY = typer.Option(None, "--priority", help=PRIORITY_HELP)
ACROSS = typer.Option(None, "--across", help=ACROSS_HELP)
MODEL_HELP = (
    "Embedding model folder (sentence-transformers, Hugging Face, or exported by kalmix train), "
    "or minilm-static: all-MiniLM-L6-v2 distilled into a static token table (built once in the "
    "workspace cache), ~60-90x faster on a CPU for 100k+ rows, STS-B 0.72 vs MiniLM's 0.82. "
    "Default: embedder.model in kalmix.toml, else the bundled all-MiniLM-L6-v2."
)
EMBED_MODEL = typer.Option(None, "--model", help=MODEL_HELP)
EMBED_BATCH = typer.Option(0, "--batch-size", help="Texts per batch (default: kalmix.toml).")
ADDRESS = typer.Option(
    None, "--address", help="Ray cluster address for --executor ray (default: local Ray)."
)
OUT_RUN = typer.Option(
    ..., "--out-run", help="Run name: checkpoints, metrics and model go to runs/NAME/."
)


def open_catalog() -> Catalog:
    """The catalog of the workspace (`--workspace`, else $KALMIX_HOME, else the current folder).

    Imported here, when a command runs: DuckDB and Arrow stay out of `--help` (see the package
    docstring)."""
    from catalog.db import Catalog
    from catalog.workspace import Workspace

    return Catalog.open(Workspace.resolve())


def grouped(
    options: dict[str, tuple[Any, Any]], into: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the `options` (name -> (type, typer.Option)) as keyword parameters of its
    signature, and hand it their values as one dict in parameter `into`: a group of options is
    declared once, in a table, and reaches the code as one value."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != into]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
            for name, (kind, option) in options.items()
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            group = {name: kwargs.pop(name) for name in options}
            command(**kwargs, **{into: group})

        wrapper.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        return wrapper

    return decorate
