"""Python standard library docstrings: summary line -> the rest of the docstring.

Read with `ast` from the installed standard library's source files, never by importing them:
importing runs module code (`antigravity` opens a browser, `this` prints, `idlelib` wants a
display), and `ast` sees every module, private helpers included. Module, class, function and
method docstrings all count, as written (`ast.get_docstring` removes only the indentation);
a docstring of one paragraph has no body to pair with and is counted, not a row.

Left out: `site-packages` (not the standard library) and the test suites (`test/`,
`*/tests/`, `idle_test/`), which Debian ships separately (libpython3.X-testsuite), so a corpus
with them would differ from machine to machine. Modules implemented in C have no source and so
no rows here; `corpus.sample` reads those with `inspect` for its small demo set and shares
`flatten` with this module.
"""

from __future__ import annotations

import ast
import sysconfig
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from corpus.corpora.common import Row, count, sample_rows

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
SKIP_DIRS |= {"__pycache__"}


def stdlib_root() -> Path:
    """The running interpreter's standard library folder (e.g. /usr/lib/python3.11)."""
    return Path(sysconfig.get_paths()["stdlib"])


def flatten(doc: str, cap: int | None = None) -> str:
    """A docstring on one line (whitespace runs become one space), optionally cut at `cap`."""
    text = " ".join(doc.split())
    return text[:cap] if cap else text


def module_files(root: Path) -> list[tuple[str, Path]]:
    """(dotted module name, source file) for every .py file of the library, sorted by name."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(p.isidentifier() for p in parts):
            out.append((".".join(parts), path))
    return out


def docstrings(source: bytes | str, module: str) -> Iterator[tuple[str, str, str]]:
    """(qualified name, kind, docstring) for the module and every class and function in it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # invalid escapes in old sources
        tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    if doc:
        yield module, "module", doc

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str, str]]:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{node.name}"
                doc = ast.get_docstring(node)
                if doc:
                    kind = "class" if isinstance(node, ast.ClassDef) else "function"
                    yield name, kind, doc
                yield from walk(node.body, name)

    yield from walk(tree.body, module)


def split_docstring(doc: str) -> tuple[str, str]:
    """(summary, body): the first paragraph on one line, and the rest as written."""
    head, _, rest = doc.strip().partition("\n\n")
    return flatten(head), rest.strip()


def file_rows(unit: tuple[str, Path], notes: Counter | None = None) -> Iterator[Row]:
    module, path = unit
    try:
        found = list(docstrings(path.read_bytes(), module))
    except (SyntaxError, ValueError):
        count(notes, "source files that do not parse")
        return
    for name, kind, doc in found:
        summary, body = split_docstring(doc)
        if not body:
            count(notes, "docstrings without a body")
            continue
        yield {
            "query": summary,
            "positive": body,
            "language": "en",
            "meta": {"object": name, "kind": kind, "module": module},
        }


def read(
    root: Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    notes: Counter | None = None,
) -> Iterator[pa.Table]:
    """The library's docstrings as record tables; a limit samples whole files, spread out."""
    files = module_files(root or stdlib_root())
    return sample_rows(files, lambda unit: file_rows(unit, notes), limit, seed)
