"""Planning: resolve a spec to pinned dataset versions and the rows each contributes.

Reads the catalog, never the data: a live preview (`plan_mixture`) must stay fast. The rules
for pinning, weights, caps and the budget are in the package docstring.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from catalog import queries, versions
from catalog.db import Catalog
from catalog.mixtures.spec import ManifestEntry, MixtureSpec
from catalog.versions import VersionRef
from catalog.vocabulary import WEIGHTINGS
from corpus import storage
from corpus.errors import KalmixError
from corpus.schema import suggest
from corpus.storage import StorePath


@dataclass(frozen=True)
class Pin:
    """A selected dataset version and what sampling needs to read it."""

    dataset: str
    version: int
    task_type: str
    category: str
    instruction: str | None
    rows: int
    path: StorePath
    files: list[StorePath]
    content_hash: str
    languages: dict[str, int]


def _check_spec(spec: MixtureSpec) -> None:
    if spec.weighting not in WEIGHTINGS:
        raise KalmixError(f"unknown weighting {spec.weighting!r}; one of: {', '.join(WEIGHTINGS)}")
    if bool(spec.where) == bool(spec.datasets):
        raise KalmixError(
            "a mixture selects datasets with a WHERE clause or an explicit list, exactly one "
            "of them (--where, or --dataset / dataset entries in --spec)"
        )
    if spec.weighting == "temperature" and not spec.tau > 0:
        raise KalmixError(f"tau must be positive (got {spec.tau})")
    if spec.weighting == "explicit" and not spec.weights:
        raise KalmixError("explicit weighting needs a weight per dataset (--weight NAME=W)")
    if spec.weights and spec.weighting != "explicit":
        raise KalmixError(
            f"weights were given but the weighting is {spec.weighting!r}; use explicit weighting"
        )
    if spec.budget is not None and spec.budget <= 0:
        raise KalmixError(f"budget must be a positive number of rows (got {spec.budget})")
    for name, cap in [("*", spec.cap), *spec.caps.items()]:
        if cap is not None and cap < 1:
            raise KalmixError(
                f"cap for {name} must be at least 1 row (got {cap}); to leave a dataset out, "
                "do not select it"
            )
    for name, share in [("*", spec.cap_share), *spec.cap_shares.items()]:
        if share is not None and not 0 < share <= 1:
            raise KalmixError(f"cap share for {name} must be in (0, 1] (got {share})")
    for key, kind in (("caps", int), ("cap_shares", int | float), ("instructions", str)):
        for name, value in getattr(spec, key).items():
            if not isinstance(value, kind) or isinstance(value, bool):
                raise KalmixError(f"{key} of {name} has a value of the wrong type: {value!r}")
    for name, w in spec.weights.items():
        if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise KalmixError(f"weight of {name} must be a finite number >= 0 (got {w!r})")


def _split_and(where: str) -> list[str]:
    """The top-level AND operands of a WHERE (quotes, parentheses and BETWEEN respected)."""
    tokens = re.finditer(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[()]|\w+|\S", where)
    parts, start, depth, between = [], 0, 0, False
    for tok in tokens:
        text = tok.group().lower()
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0 and text == "between":
            between = True
        elif depth == 0 and text == "and":
            if between:
                between = False
            else:
                parts.append(where[start : tok.start()].strip())
                start = tok.end()
    parts.append(where[start:].strip())
    return [p for p in parts if p]


def _explain_empty(cat: Catalog, where: str, eval_matched: int) -> KalmixError:
    total = cat.query("SELECT count(*) AS n FROM datasets_view WHERE NOT is_eval").to_pylist()
    lines = []
    for clause in _split_and(where):
        try:
            count = f"{queries.datasets(cat, f'({clause}) AND NOT is_eval').num_rows} datasets"
        except KalmixError:
            count = "invalid alone"
        lines.append(f"({clause}) matches {count}")
    evals = f"; {eval_matched} evaluation datasets matched and were skipped" if eval_matched else ""
    return KalmixError(
        f"WHERE {where!r} selects none of the {total[0]['n']} training datasets{evals}. "
        f'Per clause: {"; ".join(lines)}. Check with: kalmix catalog datasets --where "..."'
    )


def _select(cat: Catalog, spec: MixtureSpec) -> list[Pin]:
    """Resolve the spec's selection to pinned versions, sorted by dataset name."""
    if spec.where:
        names = queries.datasets(cat, spec.where).column("name").to_pylist()
        refs = [VersionRef(n) for n in names]
    else:
        refs = [VersionRef.parse(text) for text in spec.datasets]
        seen: set[str] = set()
        for ref in refs:
            if ref.dataset in seen:
                raise KalmixError(f"dataset {ref.dataset!r} is listed twice in the mixture")
            seen.add(ref.dataset)
    # One row per selected dataset: the pinned version, or the latest (not every version: a
    # dataset with hundreds of versions must not slow down a live preview).
    wanted = sorted({r.dataset: r.version for r in refs}.items())
    with cat.read() as con:
        rows = con.execute(
            "WITH want AS (SELECT unnest(?::VARCHAR[]) AS name, unnest(?::INTEGER[]) AS version),"
            " pick AS (SELECT w.name, coalesce(w.version, (SELECT max(version)"
            "  FROM dataset_versions WHERE dataset = w.name)) AS version FROM want w)"
            " SELECT d.name, d.category, d.task_type, d.is_eval, c.instruction, v.version, v.rows,"
            " v.path, v.files, v.content_hash, v.stats->>'languages' FROM pick"
            " JOIN datasets d ON d.name = pick.name"
            " JOIN dataset_versions v ON v.dataset = pick.name AND v.version = pick.version"
            " LEFT JOIN categories c ON c.name = d.category ORDER BY d.name",
            [[n for n, _ in wanted], [v for _, v in wanted]],
        ).fetchall()
    by_name = {row[0]: row for row in rows}
    pins, evals = [], []
    for ref in sorted(refs, key=lambda r: r.dataset):
        row = by_name.get(ref.dataset)
        if row is None:
            versions.resolve(cat, ref)  # raises the catalog's unknown dataset/version message
        name, category, task_type, is_eval, instruction, version, n, path, files, chash, langs = row
        if is_eval:
            evals.append(name)
            continue
        root = cat.workspace.locate(path)
        pins.append(
            Pin(
                name,
                version,
                task_type,
                category,
                spec.instructions.get(name, instruction),
                n,
                root,
                [storage.join(root, f) for f in files],
                chash,
                json.loads(langs) if langs else {},
            )
        )
    if evals and not spec.where:
        raise KalmixError(
            f"{', '.join(evals)}: evaluation data (is_eval) is never mixed into training; "
            "remove it from the mixture"
        )
    if not pins:
        raise _explain_empty(cat, spec.where or "", len(evals))
    selected = {p.dataset for p in pins}
    for key in ("weights", "caps", "cap_shares", "instructions"):
        stray = sorted(set(getattr(spec, key)) - selected)
        if stray:
            raise KalmixError(
                f"{key} name dataset(s) the mixture does not select: {', '.join(stray)}"
                f"{suggest(stray[0], sorted(selected))}"
            )
    return pins


def _raw_weights(spec: MixtureSpec, pins: list[Pin]) -> np.ndarray:
    n = np.array([p.rows for p in pins], dtype=np.float64)
    if spec.weighting == "proportional":
        w = n.copy()
    elif spec.weighting == "uniform":
        w = np.ones_like(n)
    elif spec.weighting == "temperature":
        w = (n / max(n.max(), 1.0)) ** (1.0 / spec.tau)  # scaled first: no overflow
    else:
        missing = [p.dataset for p in pins if p.dataset not in spec.weights]
        if missing:
            raise KalmixError(
                f"explicit weighting needs a weight for every selected dataset; missing: "
                f"{', '.join(missing)}"
            )
        w = np.array([float(spec.weights[p.dataset]) for p in pins])
    w[n == 0] = 0.0  # an empty version can contribute nothing, whatever its weight
    total = float(w.sum())
    if not (total > 0 and math.isfinite(total)):
        what = "the weights" if spec.weighting == "explicit" else "the selected datasets' rows"
        raise KalmixError(
            f"{what} sum to {total:g} over datasets with rows: weights must sum to a positive "
            "number"
        )
    return w / total


def _water_fill(shares: np.ndarray, upper: np.ndarray, total: float) -> np.ndarray:
    """x_i = min(upper_i, lam * share_i) with sum(x) = total (caller checks feasibility)."""
    x = np.zeros_like(shares)
    active = shares > 0
    remaining = float(total)
    while active.any():
        lam = remaining / shares[active].sum()
        over = active & (upper < lam * shares)
        if not over.any():
            x[active] = lam * shares[active]
            break
        x[over] = upper[over]
        remaining -= float(upper[over].sum())
        active &= ~over
    return x


def _round(x: np.ndarray, upper: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to `total`, each floor or ceil of x_i and <= upper_i (largest remainder)."""
    base = np.minimum(np.floor(x + 1e-9), upper).astype(np.int64)
    short = total - int(base.sum())
    room = np.flatnonzero(base < upper)
    order = room[np.lexsort((room, -(x[room] - base[room])))]
    base[order[: max(short, 0)]] += 1
    return base


def _allocate(spec: MixtureSpec, pins: list[Pin], shares: np.ndarray) -> np.ndarray:
    n = np.array([p.rows for p in pins], dtype=np.float64)
    caps = [spec.caps.get(p.dataset, spec.cap) for p in pins]
    row_cap = np.array([math.inf if c is None else float(c) for c in caps])
    share_cap = np.array(
        [
            s if (s := spec.cap_shares.get(p.dataset, spec.cap_share)) is not None else 1.0
            for p in pins
        ]
    )
    used = shares > 0
    if spec.budget is None:
        if share_cap[used].sum() < 1 - 1e-12:
            raise KalmixError(
                f"share caps add up to {share_cap[used].sum():.3g} < 1: no mixture can meet them; "
                "raise --cap-share"
            )
        kept = _water_fill(shares, share_cap, 1.0)
        upper = np.minimum(row_cap, n)
        live = kept > 0
        total = int(math.floor(float(np.min(upper[live] / kept[live])) + 1e-9))
        return _round(kept * total, upper, total)
    budget = int(spec.budget)
    bounded = np.minimum(row_cap, np.floor(share_cap * budget + 1e-9))
    upper = bounded if spec.allow_repeat else np.minimum(bounded, n)
    reachable = float(upper[used].sum())
    if reachable < budget:
        if not spec.allow_repeat and float(bounded[used].sum()) >= budget:
            raise KalmixError(
                f"budget {budget:,} is above the {int(reachable):,} rows available under the "
                "caps; lower --budget, or pass --allow-repeat to upsample"
            )
        raise KalmixError(
            f"budget {budget:,} cannot be met: the caps allow at most {int(reachable):,} rows; "
            "raise --cap / --cap-share or lower --budget"
        )
    upper = np.where(used, upper, 0)
    return _round(_water_fill(shares, upper, budget), upper, budget)


def make_plan(cat: Catalog, spec: MixtureSpec) -> tuple[list[Pin], list[ManifestEntry]]:
    """The pinned versions and the manifest (language counts estimated) for `spec`."""
    _check_spec(spec)
    pins = _select(cat, spec)
    shares = _raw_weights(spec, pins)
    taken = _allocate(spec, pins, shares)
    if not taken.sum():
        raise KalmixError("the mixture would take no rows: raise the caps or the budget")
    entries = [
        ManifestEntry(
            dataset=p.dataset,
            version=p.version,
            task_type=p.task_type,
            category=p.category,
            instruction=p.instruction,
            rows_available=p.rows,
            rows_taken=int(t),
            weight=float(s),
            languages=_estimate_languages(p.languages, p.rows, int(t)),
        )
        for p, s, t in zip(pins, shares, taken, strict=True)
    ]
    return pins, entries


def _estimate_languages(counts: dict[str, int], rows: int, taken: int) -> dict[str, int]:
    if not rows or not taken:
        return {}
    scaled = {k: round(v * taken / rows) for k, v in counts.items()}
    return {k: v for k, v in scaled.items() if v}


def plan_mixture(cat: Catalog, spec: MixtureSpec | dict) -> list[ManifestEntry]:
    """Resolve a spec to its manifest without reading data or writing anything (live previews).

    Raises the same errors `create_mixture` would; language counts are estimates.
    """
    spec = spec if isinstance(spec, MixtureSpec) else MixtureSpec.from_dict(spec)
    return make_plan(cat, spec)[1]
