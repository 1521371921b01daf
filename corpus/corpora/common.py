"""What every raw-corpus parser shares: where system files are, rows to Arrow, seeded sampling,
and asking dpkg about packages.

A parser turns its source into *units* (a synset line, a dictionary entry, a man page file, a
package stanza, a Python source file) that are cheap to list, and a function from one unit to
zero or more *rows* (`query`, `positive`, `score`, `label`, `language`, `meta`). `sample_rows`
then reads either every unit in source order or, with a limit, units in a seeded random order
until it has enough rows, and emits those in source order: a sample spread over the whole source
(not the first N headwords, which would all start with 'a'), the same for the same seed, and
costing about as much as the rows it returns.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from corpus.errors import KalmixError

U = TypeVar("U")
Row = dict[str, Any]

ROOT_ENV = "KALMIX_CORPORA_ROOT"
APT_LISTS_DIR = "/var/lib/apt/lists"
DPKG_ADMINDIR = "/var/lib/dpkg"

# The columns a corpus table carries; `kalmix.ingest` maps them onto the record schema by name.
ROW_SCHEMA = pa.schema(
    [
        pa.field("query", pa.string()),
        pa.field("positive", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("language", pa.string()),
        pa.field("meta", pa.string()),
    ]
)
BATCH_ROWS = 20_000


def system_root() -> Path:
    """`/`, or `$KALMIX_CORPORA_ROOT`: read the corpora of a chroot or mounted image (and tests)."""
    return Path(os.environ.get(ROOT_ENV) or "/")


def system_path(path: str) -> Path:
    """An absolute system path such as `/usr/share/wordnet`, under `system_root()`."""
    return system_root() / path.lstrip("/")


def rerooted() -> bool:
    return system_root() != Path("/")


def to_table(rows: list[Row]) -> pa.Table:
    """Rows (dicts with some of ROW_SCHEMA's keys; `meta` a dict) as one Arrow table."""
    columns: dict[str, list] = {name: [] for name in ROW_SCHEMA.names}
    for row in rows:
        for name in ROW_SCHEMA.names:
            value = row.get(name)
            if name == "meta":
                value = json.dumps(value or {}, ensure_ascii=False)
            columns[name].append(value)
    return pa.table(columns, schema=ROW_SCHEMA)


def _batches(rows: Iterable[Row], batch_rows: int) -> Iterator[pa.Table]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= batch_rows:
            yield to_table(batch)
            batch = []
    if batch:
        yield to_table(batch)


def sample_rows(
    units: Sequence[U],
    rows: Callable[[U], Iterable[Row]],
    limit: int | None = None,
    seed: int = 0,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.Table]:
    """Every unit's rows in source order, or a seeded sample of `limit` rows spread over all units.

    The sample takes whole units (all rows of a synset, say) in a shuffled order until it has
    `limit` rows, truncating the last one, and returns them in source order.
    """
    if limit is None:
        yield from _batches((row for unit in units for row in rows(unit)), batch_rows)
        return
    if limit < 1:
        raise KalmixError(f"--limit must be at least 1 (got {limit})")
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    picked: list[tuple[int, list[Row]]] = []
    total = 0
    for i in order:
        got = list(rows(units[i]))[: limit - total]
        if got:
            picked.append((i, got))
            total += len(got)
        if total >= limit:
            break
    picked.sort(key=lambda p: p[0])
    yield from _batches((row for _, got in picked for row in got), batch_rows)


def count(notes: Counter | None, reason: str) -> None:
    """Count something the parser noticed (a page without NAME, a docstring without body...);
    the counts go in the version's stats, so nothing is dropped silently."""
    if notes is not None:
        notes[reason] += 1


def paragraphs(text: str) -> str:
    """Plain text as a format lays it out: lines of a paragraph joined, paragraphs on new lines.

    This is layout, not cleaning: wrapped lines become one line and runs of spaces one space,
    the words stay as the source wrote them.
    """
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        joined = " ".join(block.split())
        if joined:
            out.append(joined)
    return "\n".join(out)


def package_version(package: str) -> str | None:
    """The installed version of a Debian package (dpkg-query), or None if not installed.

    Under `$KALMIX_CORPORA_ROOT` dpkg is asked about that root's database (`--admindir`), so a
    version registered from a mounted image records the image's package, not this machine's.
    """
    if shutil.which("dpkg-query") is None:
        return None
    admindir = ["--admindir", str(system_path(DPKG_ADMINDIR))] if rerooted() else []
    done = subprocess.run(
        ["dpkg-query", *admindir, "-W", "-f", "${Status}\t${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or "\t" not in done.stdout:
        return None
    status, version = done.stdout.split("\t", 1)
    return version if status.endswith(" installed") else None


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def apt_install(
    package: str,
    status: Callable[[str], None] | None = None,
    lists: Path = Path(APT_LISTS_DIR),
) -> None:
    """`apt-get install -y PACKAGE`, after `apt-get update` when the machine has no package lists.

    Docker images delete `/var/lib/apt/lists`, where an install can only fail with "Unable to
    locate package", so `update` comes first there; with lists present the install is tried
    first and `update` runs only if it fails (stale lists point at files the mirror dropped).
    The only code in kalmix that touches the network, and only for a package the user asked for.
    """
    if shutil.which("apt-get") is None:
        raise KalmixError(f"Debian package {package} is needed but this system has no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def say(text: str) -> None:
        if status:
            status(text)

    def update() -> None:
        say("apt-get update ...")
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)

    def install() -> subprocess.CompletedProcess:
        say(f"apt-get install -y {package} ...")
        return subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", package],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    updated = not has_package_lists(lists)
    if updated:
        update()
    done = install()
    if done.returncode != 0 and not updated:
        update()
        done = install()
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit {done.returncode}"
        raise KalmixError(
            f"apt-get install -y {package} failed ({why}); run it yourself to see the full output"
        )


def has_package_lists(lists: Path) -> bool:
    """Whether apt has downloaded any `*_Packages` list into `lists` (it knows no package else)."""
    return lists.is_dir() and any(lists.glob("*_Packages*"))
