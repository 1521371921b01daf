"""TOML files (workspace settings, mixture specs, training configs, prompt templates) read one
way: a missing file or a syntax error is a `KalmixError` naming the file, never a traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from corpus.errors import KalmixError


def parse_toml(text: str, source: Path | str) -> dict[str, Any]:
    """The TOML document `text` (read from `source`, named in the error)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise KalmixError(f"{source} is not valid TOML: {err}") from None


def read_toml(path: Path | str, *, what: str = "file") -> dict[str, Any]:
    """The TOML file at `path`; `what` names it when it is missing ("spec file", ...)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise KalmixError(f"{what} not found: {path}") from None
    return parse_toml(text, path)
