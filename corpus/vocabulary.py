"""The executor words every `--executor` option uses, defined once (`corpus.executor` runs them).

Light on purpose: the command line declares its options with these, and `kalmix --help` must
not load Arrow, polars or DuckDB, so this module imports nothing but `corpus.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence

from corpus.errors import KalmixError

# The executor words every command uses (`--executor`), defined once.
EXECUTORS: dict[str, str] = {
    "inline": "in this process",
    "local": "a process pool on this machine (--workers processes, 0 = one per core)",
    "ray": "Ray Data on a local Ray, or on the cluster at --address",
}


def executor_help(allowed: Sequence[str] = tuple(EXECUTORS), note: str = "") -> str:
    """The `--executor` help of a command that runs on `allowed`, with the command's `note`."""
    words = "; ".join(f"{name}: {EXECUTORS[name]}" for name in allowed)
    return f"Where it runs. {words}.{' ' + note if note else ''}"


def check_executor(name: str, allowed: Sequence[str] = tuple(EXECUTORS)) -> str:
    """`name` if it is one of the executor words `allowed`; else a `KalmixError`."""
    if name not in allowed:
        raise KalmixError(f"unknown --executor {name!r}; one of: {', '.join(allowed)}")
    return name
