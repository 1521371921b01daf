"""The `kalmix` console script: the root options, every command module mounted one way, and
the one error printer (also what `python -m trainer` runs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.markup import escape
from typer._click import exceptions as click_errors  # Typer >= 0.25 vendors click

from corpus.console import err_console
from corpus.errors import KalmixError
from kalmix.commands import (
    catalog,
    clean,
    corpora,
    dashboard,
    embed,
    eval,
    mix,
    search,
    synth,
    train,
    workspace,
)

app = typer.Typer(
    name="kalmix",
    help="Build embedding-model training data: catalog, clean, synthesise, mix, train, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    workspace: Path = typer.Option(
        None,
        "--workspace",
        "-w",
        envvar="KALMIX_HOME",
        help="Workspace folder (default: $KALMIX_HOME, else the current folder).",
    ),
) -> None:
    if workspace:
        os.environ["KALMIX_HOME"] = str(workspace)


# In pipeline order, which is the order `kalmix --help` lists them in.
for module in (
    workspace,
    corpora,
    catalog,
    clean,
    embed,
    synth,
    mix,
    search,
    train,
    eval,
    dashboard,
):
    module.register(app)


def main(args: list[str] | None = None) -> None:
    """Entry point: expected errors print one line and exit 2; bugs keep their traceback."""
    try:
        app(args=args, standalone_mode=False)
    except KalmixError as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
