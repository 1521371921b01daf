"""Tables that describe mixtures: composition, the manifest, and the difference of two."""

from __future__ import annotations

import pyarrow as pa

from catalog.db import Catalog
from catalog.mixtures.spec import ManifestEntry, MixtureRef
from catalog.mixtures.store import resolve_mixture
from corpus.errors import KalmixError


def composition(entries: list[ManifestEntry], by: str) -> pa.Table:
    """Rows taken grouped by `task_type`, `category` or `language`, largest first."""
    if by not in ("task_type", "category", "language"):
        raise KalmixError(f"composition by {by!r}: use task_type, category or language")
    rows: dict[str, int] = {}
    sets: dict[str, set[str]] = {}
    for e in entries:
        parts = e.languages.items() if by == "language" else [(getattr(e, by), e.rows_taken)]
        for key, n in parts:
            rows[key] = rows.get(key, 0) + n
            sets.setdefault(key, set()).add(e.dataset)
    total = sum(rows.values()) or 1
    keys = sorted(rows, key=lambda k: (-rows[k], k))
    return pa.table(
        {
            by: keys,
            "datasets": [len(sets[k]) for k in keys],
            "rows": [rows[k] for k in keys],
            "share": [round(rows[k] / total, 4) for k in keys],
        }
    )


def manifest_table(entries: list[ManifestEntry]) -> pa.Table:
    total = sum(e.rows_taken for e in entries) or 1
    return pa.table(
        {
            "dataset": [e.ref for e in entries],
            "task_type": [e.task_type for e in entries],
            "category": [e.category for e in entries],
            "available": [e.rows_available for e in entries],
            "taken": [e.rows_taken for e in entries],
            "weight": [round(e.weight, 4) for e in entries],
            "share": [round(e.rows_taken / total, 4) for e in entries],
            "repeat": [
                round(e.rows_taken / e.rows_available, 2) if e.rows_available else 0.0
                for e in entries
            ],
            "instruction": [e.instruction for e in entries],
        }
    )


def diff_mixtures(cat: Catalog, a: str | MixtureRef, b: str | MixtureRef) -> pa.Table:
    """Per dataset: added, removed, changed (version or rows) or same, with the row delta."""
    left, right = resolve_mixture(cat, a), resolve_mixture(cat, b)
    la = {e.dataset: e for e in left.entries}
    rb = {e.dataset: e for e in right.entries}
    out: dict[str, list] = {k: [] for k in ("dataset", "change", "from", "to", "rows_from")}
    out.update(rows_to=[], delta=[])
    for name in sorted(set(la) | set(rb)):
        x, y = la.get(name), rb.get(name)
        if x is None:
            change = "added"
        elif y is None:
            change = "removed"
        elif (x.version, x.rows_taken) != (y.version, y.rows_taken):
            change = "changed"
        else:
            change = "same"
        out["dataset"].append(name)
        out["change"].append(change)
        out["from"].append(f"v{x.version}" if x else None)
        out["to"].append(f"v{y.version}" if y else None)
        out["rows_from"].append(x.rows_taken if x else 0)
        out["rows_to"].append(y.rows_taken if y else 0)
        out["delta"].append((y.rows_taken if y else 0) - (x.rows_taken if x else 0))
    return pa.table(out)
