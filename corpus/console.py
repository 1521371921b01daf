"""Terminal output shared by every sub-app: one rich console, tables from Arrow, progress bars."""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Every command imports this module, `kalmix --help` too: Arrow only inside print_json.
if TYPE_CHECKING:
    import pyarrow as pa

# Piped output (CI logs, `make demo | tee`) gets a wide console instead of rich's 80 columns.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 140))
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)


def _cell(value: Any, width: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(table: pa.Table, title: str | None = None, width: int = 60) -> None:
    out = Table(title=title, show_lines=False)
    for name in table.column_names:
        out.add_column(name, overflow="fold")
    for row in table.to_pylist():
        out.add_row(*(_cell(row[c], width) for c in table.column_names))
    console.print(out)


def print_json(data: Any) -> None:
    import pyarrow as pa

    if isinstance(data, pa.Table):
        data = data.to_pylist()
    print(json.dumps(data, default=str, ensure_ascii=False, indent=2))


def progress(transient: bool = False) -> Progress:
    """A progress bar for long work; prints to stderr so `--json` output stays clean."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )
