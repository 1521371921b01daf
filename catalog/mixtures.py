"""Versioned data mixtures: which dataset versions, in what proportions, how many rows, frozen.

A `MixtureSpec` (a SQL `WHERE` over `datasets_view` or an explicit list of `NAME[@vN]`; a
weighting; caps; a budget; a seed) resolves to a manifest of exact dataset versions with the
rows each contributes, and the sampled rows are stored, so `name@vN` always yields the same
training rows, whatever versions are registered later.

Decisions, written down here because every caller depends on them:

- Pinning. A `WHERE` or a bare name pins the latest version at creation time; `NAME@vN` pins
  that version. Datasets marked `is_eval` are never selected: a `WHERE` skips them, naming one
  is an error (evaluation data must not leak into training).
- Weights. proportional: w = n (rows available); uniform: w = 1; temperature: w = n^(1/tau)
  (tau > 1 flattens toward uniform, tau = 1 is proportional, tau < 1 favours large datasets);
  explicit: the user's weights. The manifest's `weight` is the normalised target share.
- Caps and budget. Each dataset has an upper bound: its row cap, its share cap times the budget,
  and (unless `allow_repeat`) its rows available. With a budget, rows are water-filled: each
  dataset gets its share of the budget, a capped dataset keeps its cap and the excess is spread
  over the others by weight; a budget that cannot be met is an error. Without a budget the
  shares are kept exactly (share caps water-filled first) and the total is the largest that
  fits every dataset without repeating a row. Fractional rows are rounded by largest remainder.
- Sampling. Each dataset draws from its own generator seeded by (seed, dataset, version), so
  adding a dataset to a spec leaves the others' rows unchanged. The rows taken are a prefix of
  one seeded permutation (a bigger budget adds rows, it never reshuffles); with `allow_repeat`
  every row is repeated floor(t/n) times and the remainder is drawn without replacement.
- Storage. Ids are not unique within a dataset (exact duplicates share one), so the sampled
  rows are stored as positions: (dataset, version, file index, row index, id), sorted by
  dataset then position, in `<ws>/mixtures/<name>/v<N>/rows.parquet`. It is written in a
  staging folder and renamed into place inside the transaction that inserts the catalog row,
  the same rule as dataset versions. The stored id is checked against the data on every read.
- Instructions. A per-dataset instruction in the spec replaces the rows' `instruction`; else
  the category's default instruction fills rows that have none.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from catalog import queries, versions
from catalog.db import Catalog, fetch_one
from catalog.versions import NAME_RE, VersionRef, parse_ref
from corpus import storage
from corpus.errors import KalmixError
from corpus.executor import prefetch_map
from corpus.operator import DATASET_COLUMN
from corpus.schema import RECORD_FIELDS, RECORD_SCHEMA, UNKNOWN_LANGUAGE, suggest
from corpus.storage import StorePath

WEIGHTINGS: tuple[str, ...] = ("proportional", "uniform", "temperature", "explicit")
ROWS_FILE = "rows.parquet"
ROWS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("file", pa.int32(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
    ]
)
SHARD_SCHEMA = RECORD_SCHEMA.append(pa.field(DATASET_COLUMN, pa.string(), nullable=False))
Progress = Callable[[int], None]
DECODE_ROWS = 65_536  # rows decoded at a time when reading sampled rows back


@dataclass(frozen=True)
class MixtureRef:
    """`name@vN`; `version=None` means the latest at resolution time."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> MixtureRef:
        return cls(*parse_ref(text))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@v{self.version}"


@dataclass(frozen=True)
class MixtureSpec:
    """What a curator asks for; resolved against the catalog by `plan_mixture`.

    Per-dataset dicts (`weights`, `caps`, `cap_shares`, `instructions`) are keyed by dataset
    name (no `@vN`) and must name selected datasets. `cap` and `cap_share` apply to every
    dataset; a per-dataset entry replaces them for that dataset.
    """

    where: str | None = None
    datasets: list[str] = field(default_factory=list)  # NAME or NAME@vN
    weighting: str | None = None  # default: explicit when weights are given, else proportional
    tau: float = 1.0
    weights: dict[str, float] = field(default_factory=dict)
    budget: int | None = None
    cap: int | None = None
    cap_share: float | None = None
    caps: dict[str, int] = field(default_factory=dict)
    cap_shares: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    allow_repeat: bool = False
    instructions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weighting is None:
            object.__setattr__(self, "weighting", "explicit" if self.weights else "proportional")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("weights", "caps", "cap_shares", "instructions"):
            out[key] = dict(sorted(out[key].items()))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixtureSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KalmixError(
                f"unknown mixture spec key(s) {', '.join(unknown)}; keys: {', '.join(sorted(known))}"
            )
        data = {k: v for k, v in data.items() if v is not None}
        for key, value in data.items():
            expected = SPEC_TYPES[key]
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
                raise KalmixError(
                    f"mixture spec key {key!r} must be {_type_name(expected)}, got {value!r}"
                )
        if "datasets" in data:
            data["datasets"] = list(data["datasets"])
        return cls(**data)


@dataclass(frozen=True)
class ManifestEntry:
    """One dataset version in a mixture and the rows it contributes.

    `weight` is the normalised target share from the weighting (before caps); the realised
    share is rows_taken / total. `languages` counts the rows taken per language: exact in a
    created version, estimated from the version's stats in a plan.
    """

    dataset: str
    version: int
    task_type: str
    category: str
    instruction: str | None
    rows_available: int
    rows_taken: int
    weight: float
    languages: dict[str, int] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.dataset}@v{self.version}"


@dataclass(frozen=True)
class MixtureVersion:
    name: str
    version: int
    spec: dict
    entries: list[ManifestEntry]
    rows: int
    ids_path: Path
    content_hash: str
    created_at: datetime | None = None

    @property
    def ref(self) -> MixtureRef:
        return MixtureRef(self.name, self.version)

    def entry(self, dataset: str) -> ManifestEntry:
        for e in self.entries:
            if e.dataset == dataset:
                return e
        raise KalmixError(
            f"mixture {self.ref} has no dataset {dataset!r}; it has: "
            + ", ".join(e.dataset for e in self.entries)
        )


SPEC_TYPES: dict[str, type | tuple[type, ...]] = {
    "where": str,
    "datasets": (list, tuple),
    "weighting": str,
    "tau": (int, float),
    "weights": dict,
    "budget": int,
    "cap": int,
    "cap_share": (int, float),
    "caps": dict,
    "cap_shares": dict,
    "seed": int,
    "allow_repeat": bool,
    "instructions": dict,
}


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {
        list: "a list",
        dict: "a table",
        str: "a string",
        int: "an integer",
        bool: "true/false",
    }
    if isinstance(expected, tuple):
        return "a list" if list in expected else "a number"
    return names[expected]


SPEC_KEYS = ("where", "weighting", "tau", "budget", "cap", "cap_share", "seed", "allow_repeat")
DATASET_KEYS = ("name", "weight", "cap", "cap_share", "instruction")


def read_spec_toml(path: Path) -> dict[str, Any]:
    """A `mixture.toml` as a spec dict: top-level keys plus `[[dataset]]` entries.

    Each entry has `name` (NAME or NAME@vN) and optionally `weight`, `cap`, `cap_share`,
    `instruction`; a `weight` on any entry means explicit weighting. Error messages here avoid
    square brackets because the CLI prints them as rich markup.
    """
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KalmixError(f"spec file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise KalmixError(f"{path} is not valid TOML: {err}") from None
    unknown = sorted(set(raw) - {*SPEC_KEYS, "dataset"})
    if unknown:
        raise KalmixError(
            f"{path}: unknown key(s) {', '.join(unknown)}; keys: {', '.join(SPEC_KEYS)} "
            "and dataset entries (see kalmix mix create --help)"
        )
    spec = {k: raw[k] for k in SPEC_KEYS if k in raw}
    entries = raw.get("dataset", [])
    if not isinstance(entries, list):
        raise KalmixError(
            f"{path}: write each dataset as its own TOML table entry, see kalmix mix create --help"
        )
    if entries:
        spec.update(datasets=[], weights={}, caps={}, cap_shares={}, instructions={})
    for i, entry in enumerate(entries, start=1):
        bad = sorted(set(entry) - set(DATASET_KEYS))
        if "name" not in entry or bad:
            raise KalmixError(
                f"{path}: dataset entry #{i} needs a name and may have only "
                f"{', '.join(DATASET_KEYS)}" + (f" (not {', '.join(bad)})" if bad else "")
            )
        name = VersionRef.parse(str(entry["name"])).dataset
        spec["datasets"].append(str(entry["name"]))
        for key, target in (
            ("weight", "weights"),
            ("cap", "caps"),
            ("cap_share", "cap_shares"),
            ("instruction", "instructions"),
        ):
            if key in entry:
                spec[target][name] = entry[key]
    return spec


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Pin:
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


def _select(cat: Catalog, spec: MixtureSpec) -> list[_Pin]:
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
            _Pin(
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


def _raw_weights(spec: MixtureSpec, pins: list[_Pin]) -> np.ndarray:
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


def _allocate(spec: MixtureSpec, pins: list[_Pin], shares: np.ndarray) -> np.ndarray:
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


def _plan(cat: Catalog, spec: MixtureSpec) -> tuple[list[_Pin], list[ManifestEntry]]:
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
    return _plan(cat, spec)[1]


# ----------------------------------------------------------------------------- creating


def mixtures_dir(cat: Catalog) -> Path:
    return cat.workspace.root / "mixtures"


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _sample_positions(n: int, taken: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row positions in [0, n): every row floor(taken/n) times, the rest without repeats."""
    full, rest = divmod(taken, n)
    parts = [np.tile(np.arange(n, dtype=np.int64), full)] if full else []
    parts.append(rng.permutation(n)[:rest].astype(np.int64))
    positions = np.concatenate(parts)
    positions.sort(kind="stable")
    return positions


def _file_offsets(pin: _Pin) -> np.ndarray:
    """Start row of each file, plus the end; checks the files against the catalog."""
    counts = []
    for f in pin.files:
        try:
            counts.append(storage.num_rows(f))
        except FileNotFoundError:
            raise KalmixError(
                f"{pin.dataset}@v{pin.version}: data file missing ({f}); run: kalmix catalog check"
            ) from None
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    if offsets[-1] != pin.rows:
        raise KalmixError(
            f"{pin.dataset}@v{pin.version}: files hold {offsets[-1]} rows, the catalog says "
            f"{pin.rows}; run: kalmix catalog check"
        )
    return offsets


def _sample(pin: _Pin, taken: int, seed: int) -> tuple[pa.Table, dict[str, int]]:
    """The rows table (ROWS_SCHEMA) of one dataset and the language counts of the rows taken."""
    offsets = _file_offsets(pin)
    positions = _sample_positions(pin.rows, taken, _rng(seed, pin.dataset, pin.version))
    file_idx = np.searchsorted(offsets, positions, side="right") - 1
    row_idx = positions - offsets[file_idx]
    ids, langs = [], []
    for f in np.unique(file_idx):
        rows = row_idx[file_idx == f]
        pf = pq.ParquetFile(storage.open_input(pin.files[f]))
        table = pf.read(columns=["id", "language"]).take(rows)
        ids.extend(table.column("id").chunks)
        langs.extend(table.column("language").chunks)
    language = pc.fill_null(pa.chunked_array(langs, pa.string()), UNKNOWN_LANGUAGE)
    counts = {
        v["values"]: v["counts"] for v in pc.value_counts(language.combine_chunks()).to_pylist()
    }
    table = pa.table(
        {
            "dataset": pa.repeat(pa.scalar(pin.dataset, pa.string()), taken),
            "version": pa.array(np.full(taken, pin.version, np.int32)),
            "file": pa.array(file_idx.astype(np.int32)),
            "row": pa.array(row_idx),
            "id": pa.chunked_array(ids, pa.string()).combine_chunks(),
        },
        schema=ROWS_SCHEMA,
    )
    return table, dict(sorted(counts.items()))


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def check_mixture_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise KalmixError(
            f"mixture name {name!r} is not valid: use letters, digits, '.', '_' or '-' "
            "(at most 128, not starting with a symbol)"
        )
    return name


def create_mixture(
    cat: Catalog, name: str, spec: MixtureSpec | dict, *, progress: Progress | None = None
) -> MixtureVersion:
    """Resolve, sample and register `name@v(N+1)`: ids file first, then the catalog row.

    `progress` is called with the number of rows sampled after each dataset.
    """
    check_mixture_name(name)
    spec = spec if isinstance(spec, MixtureSpec) else MixtureSpec.from_dict(spec)
    pins, planned = _plan(cat, spec)
    folder = mixtures_dir(cat) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as err:
        raise KalmixError(f"cannot write under {folder}: {err.strerror}") from None
    try:
        entries: list[ManifestEntry] = []
        digest = hashlib.sha256()
        # Datasets are sampled on two threads (Parquet decoding releases the GIL) and written
        # in manifest order, so the file is the same whatever the timing.
        samples = prefetch_map(
            lambda pe: _sample(pe[0], pe[1].rows_taken, spec.seed) if pe[1].rows_taken else None,
            zip(pins, planned, strict=True),
            workers=2,
            ahead=4,
        )
        with pq.ParquetWriter(
            staging / ROWS_FILE, ROWS_SCHEMA, compression="zstd", use_dictionary=["dataset"]
        ) as writer:
            for pin, entry, sample in zip(pins, planned, samples, strict=True):
                languages: dict[str, int] = {}
                if sample is not None:
                    table, languages = sample
                    writer.write_table(table, row_group_size=1 << 20)
                    for col in ("file", "row"):
                        digest.update(table.column(col).to_numpy().astype("<i8").tobytes())
                    if progress:
                        progress(entry.rows_taken)
                entries.append(_with_languages(entry, languages))
                digest.update(pin.content_hash.encode())
        manifest = [asdict(e) for e in entries]
        digest.update(_canonical(manifest).encode())
        return _commit(cat, name, staging, spec, entries, digest.hexdigest())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _with_languages(entry: ManifestEntry, languages: dict[str, int]) -> ManifestEntry:
    return ManifestEntry(**{**asdict(entry), "languages": languages})


def _commit(
    cat: Catalog,
    name: str,
    staging: Path,
    spec: MixtureSpec,
    entries: list[ManifestEntry],
    content_hash: str,
) -> MixtureVersion:
    rows = sum(e.rows_taken for e in entries)
    moved: Path | None = None
    try:
        with cat.write() as con:
            in_catalog = con.execute(
                "SELECT coalesce(max(version), 0) FROM mixture_versions WHERE mixture = ?", [name]
            ).fetchall()[0][0]
            on_disk = [
                int(p.name[1:])
                for p in staging.parent.glob("v*")
                if p.is_dir() and p.name[1:].isdigit()
            ]
            number = max([in_catalog, *on_disk]) + 1
            final = staging.parent / f"v{number}"
            os.rename(staging, final)
            moved = final
            if fetch_one(con, "SELECT 1 FROM mixtures WHERE name = ?", [name]) is None:
                con.execute("INSERT INTO mixtures(name) VALUES (?)", [name])
            con.execute(
                "INSERT INTO mixture_versions(mixture, version, spec, manifest, ids_path, rows,"
                " content_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    name,
                    number,
                    _canonical(spec.to_dict()),
                    _canonical([asdict(e) for e in entries]),
                    str((final / ROWS_FILE).relative_to(cat.workspace.root)),
                    rows,
                    content_hash,
                ],
            )
    except BaseException:
        if moved is not None:
            try:
                os.rename(moved, staging)
            except OSError:
                pass
        raise
    return resolve_mixture(cat, MixtureRef(name, number))


# ----------------------------------------------------------------------------- reading


def resolve_mixture(cat: Catalog, ref: str | MixtureRef) -> MixtureVersion:
    """The version a reference names (latest if unversioned), or an error naming what exists."""
    if isinstance(ref, str):
        ref = MixtureRef.parse(ref)
    sql = (
        "SELECT version, spec, manifest, ids_path, rows, content_hash, created_at "
        "FROM mixture_versions WHERE mixture = ? "
    )
    with cat.read() as con:
        if ref.version is None:
            row = fetch_one(con, sql + "ORDER BY version DESC LIMIT 1", [ref.name])
        else:
            row = fetch_one(con, sql + "AND version = ?", [ref.name, ref.version])
        if row is None:
            existing = [
                r[0]
                for r in con.execute(
                    "SELECT version FROM mixture_versions WHERE mixture = ? ORDER BY 1", [ref.name]
                ).fetchall()
            ]
            names = [r[0] for r in con.execute("SELECT name FROM mixtures").fetchall()]
    if row is None:
        if existing:
            raise KalmixError(
                f"mixture {ref} does not exist; {ref.name} has versions: "
                + ", ".join(f"v{v}" for v in existing)
            )
        raise KalmixError(
            f"unknown mixture {ref.name!r}{suggest(ref.name, names)} "
            "(list them with: kalmix mix list)"
        )
    version, spec, manifest, ids_path, rows, chash, created = row
    return MixtureVersion(
        name=ref.name,
        version=version,
        spec=json.loads(spec),
        entries=[ManifestEntry(**e) for e in json.loads(manifest)],
        rows=rows,
        ids_path=cat.workspace.root / ids_path,
        content_hash=chash,
        created_at=created,
    )


def list_mixtures(cat: Catalog) -> pa.Table:
    """One row per mixture: its versions and its latest version's size."""
    return cat.query(
        """
        SELECT mixture AS name, count(*) AS versions, max(version) AS latest,
               arg_max(rows, version) AS rows,
               json_array_length(arg_max(manifest, version)) AS datasets,
               max(created_at) AS updated_at
        FROM mixture_versions GROUP BY mixture ORDER BY mixture
        """
    )


def _fill_instruction(table: pa.Table, entry: ManifestEntry, override: bool) -> pa.Table:
    if "instruction" not in table.column_names or entry.instruction is None:
        return table
    i = table.column_names.index("instruction")
    column = table.column(i)
    if override:
        column = pa.repeat(pa.scalar(entry.instruction, pa.string()), table.num_rows)
    else:
        column = pc.fill_null(column, entry.instruction)
    return table.set_column(i, table.schema.field(i), column)


def _take_rows(
    files: list[Path],
    file_idx: np.ndarray,
    row_idx: np.ndarray,
    columns: list[str] | None,
    batch_rows: int,
) -> Iterator[pa.Table]:
    """Tables of the rows at sorted (file, row) positions, in that order, batch_rows at a time.

    Only the row groups that hold wanted rows are decoded, DECODE_ROWS at a time, so memory
    stays at about one decoded chunk plus one output batch whatever the dataset's size.
    """
    pending: list[pa.Table] = []
    held = 0
    cuts = np.flatnonzero(np.diff(file_idx)) + 1
    for seg_start, seg_end in zip(
        [0, *cuts.tolist()], [*cuts.tolist(), len(file_idx)], strict=True
    ):
        rows = row_idx[seg_start:seg_end]
        pf = pq.ParquetFile(storage.open_input(files[int(file_idx[seg_start])]))
        offset = 0
        for rg in range(pf.num_row_groups):
            size = pf.metadata.row_group(rg).num_rows
            lo, hi = np.searchsorted(rows, [offset, offset + size])
            if hi > lo:
                start = offset
                for batch in pf.iter_batches(
                    batch_size=max(batch_rows, DECODE_ROWS), row_groups=[rg], columns=columns
                ):
                    a, b = np.searchsorted(rows, [start, start + batch.num_rows])
                    if b > a:
                        pending.append(pa.Table.from_batches([batch]).take(rows[a:b] - start))
                        held += int(b - a)
                    start += batch.num_rows
                    while held >= batch_rows:
                        table = pa.concat_tables(pending, promote_options="permissive")
                        yield table.slice(0, batch_rows).combine_chunks()
                        rest = table.slice(batch_rows)
                        pending, held = ([rest] if rest.num_rows else []), rest.num_rows
            offset += size
    if held:
        yield pa.concat_tables(pending, promote_options="permissive").combine_chunks()


def _pinned_files(cat: Catalog, entries: list[ManifestEntry]) -> dict[str, list[StorePath]]:
    """Data files of each entry's pinned version, in one catalog read."""
    with cat.read() as con:
        rows = con.execute(
            "SELECT dataset, version, path, files FROM dataset_versions"
            " WHERE list_contains(?::VARCHAR[], dataset)",
            [[e.dataset for e in entries]],
        ).fetchall()
    found = {(d, v): [storage.join(cat.workspace.locate(p), f) for f in fs] for d, v, p, fs in rows}
    out = {}
    for e in entries:
        if (e.dataset, e.version) not in found:
            versions.resolve(cat, VersionRef(e.dataset, e.version))  # raises what is missing
        out[e.dataset] = found[(e.dataset, e.version)]
        missing = [storage.name(f) for f in out[e.dataset] if not storage.exists(f)]
        if missing:
            raise KalmixError(
                f"{e.ref}: data file(s) missing ({', '.join(missing)}); run: kalmix catalog check"
            )
    return out


def _row_groups_by_dataset(rows_file: pq.ParquetFile) -> dict[str, list[int]]:
    """Row groups of a rows file per dataset (`create_mixture` never lets one span two)."""
    out: dict[str, list[int]] = {}
    for i in range(rows_file.num_row_groups):
        stats = rows_file.metadata.row_group(i).column(0).statistics
        out.setdefault(stats.min, []).append(i)
    return out


def iter_dataset_tables(
    cat: Catalog,
    ref: str | MixtureRef | MixtureVersion,
    *,
    batch_rows: int = 8192,
    columns: list[str] | None = None,
    datasets: list[str] | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """Yield (dataset, table of at most `batch_rows` sampled rows), dataset after dataset.

    Datasets come in manifest order (by name), rows in stored order (file, row; repeats
    adjacent), so a version always yields the same tables. Only one dataset's positions and one
    batch of records are in memory at a time. `datasets` restricts to some datasets (e.g. one
    iterator per dataset, interleaved by a trainer); `columns` restricts the record columns.
    Instructions are applied as the module docstring says. A row whose id differs from the one
    stored at creation (data changed on disk) is an error.
    """
    mv = ref if isinstance(ref, MixtureVersion) else resolve_mixture(cat, ref)
    if batch_rows <= 0:
        raise KalmixError(f"batch_rows must be positive (got {batch_rows})")
    if not mv.ids_path.exists():
        raise KalmixError(f"rows file of mixture {mv.ref} is missing: {mv.ids_path}")
    entries = [e for e in (map(mv.entry, datasets) if datasets else mv.entries) if e.rows_taken]
    overrides = set(mv.spec.get("instructions") or {})
    files = _pinned_files(cat, entries)
    stored_file = pq.ParquetFile(mv.ids_path)
    groups = _row_groups_by_dataset(stored_file)
    for entry in entries:
        read_cols = None
        if columns is not None:
            schema = storage.read_schema(files[entry.dataset][0])
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise KalmixError(
                    f"{entry.ref} has no column(s) {', '.join(unknown)}; columns: "
                    + ", ".join(schema.names)
                )
            read_cols = list(dict.fromkeys([*columns, "id"]))
        stored = stored_file.read_row_groups(
            groups.get(entry.dataset, []), columns=["file", "row", "id"]
        )
        ids = stored.column("id").combine_chunks()
        done = 0
        for table in _take_rows(
            files[entry.dataset],
            stored.column("file").to_numpy(),
            stored.column("row").to_numpy(),
            read_cols,
            batch_rows,
        ):
            expected = ids.slice(done, table.num_rows)
            if not table.column("id").combine_chunks().equals(expected):
                raise KalmixError(
                    f"{entry.ref} on disk no longer matches mixture {mv.ref} (row ids differ): "
                    "its data files changed; run: kalmix catalog check"
                )
            done += table.num_rows
            if columns is not None and "id" not in columns:
                table = table.drop_columns(["id"])
            yield entry.dataset, _fill_instruction(table, entry, entry.dataset in overrides)
        if done != len(ids):
            raise KalmixError(
                f"{entry.ref}: read {done} of the {len(ids)} rows mixture {mv.ref} sampled; "
                "its data files changed; run: kalmix catalog check"
            )


def materialize(
    cat: Catalog,
    ref: str | MixtureRef | MixtureVersion,
    out_dir: Path,
    *,
    rows_per_shard: int = 100_000,
    progress: Progress | None = None,
) -> list[Path]:
    """Write the mixture as training shards in one deterministic shuffled order.

    Shards have the record schema plus `_dataset` (operator-added columns are dropped so every
    shard has one schema). The order is a permutation seeded by the version's content hash, so
    the same version always gives the same bytes. The shuffle is external: rows are spilled to
    at most 128 bucket files by destination, then each bucket is sorted in memory, so memory is
    about rows / 128 records plus the permutation (4 or 8 bytes a row). Everything is written
    in a staging folder renamed to `out_dir` at the end; `out_dir` must not hold files.
    `_mixture.json` names the version and its content hash (readers of the folder as a Parquet
    dataset skip it by its leading underscore).
    """
    mv = ref if isinstance(ref, MixtureVersion) else resolve_mixture(cat, ref)
    out_dir = Path(out_dir)
    if rows_per_shard <= 0:
        raise KalmixError(f"rows_per_shard must be positive (got {rows_per_shard})")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise KalmixError(f"{out_dir} already exists and is not empty; choose another --out")
    if mv.rows == 0:
        raise KalmixError(f"mixture {mv.ref} has no rows to materialize")
    perm = _rng("materialize", mv.content_hash).permutation(mv.rows)
    perm = perm.astype(np.int32 if mv.rows < 2**31 else np.int64)
    shards = -(-mv.rows // rows_per_shard)
    per_bucket = -(-shards // 128)
    buckets = -(-shards // per_bucket)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    spill = staging / "spill"
    spill_schema = SHARD_SCHEMA.append(pa.field("_pos", pa.int64(), nullable=False))
    try:
        spill.mkdir(parents=True)
        sinks = [pa.OSFile(str(spill / f"{b:04d}.arrow"), "wb") for b in range(buckets)]
        writers = [ipc.new_stream(s, spill_schema) for s in sinks]
        done = 0
        for dataset, table in iter_dataset_tables(cat, mv, batch_rows=65_536):
            table = table.select(list(RECORD_FIELDS)).cast(RECORD_SCHEMA)
            dest = perm[done : done + table.num_rows].astype(np.int64)
            done += table.num_rows
            table = table.append_column(
                pa.field(DATASET_COLUMN, pa.string(), nullable=False),
                pa.repeat(pa.scalar(dataset, pa.string()), table.num_rows),
            ).append_column(pa.field("_pos", pa.int64(), nullable=False), pa.array(dest))
            bucket = dest // rows_per_shard // per_bucket
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
            for b in range(buckets):
                if bounds[b + 1] > bounds[b]:
                    writers[b].write_table(table.take(order[bounds[b] : bounds[b + 1]]))
            if progress:
                progress(table.num_rows)
        for w, s in zip(writers, sinks, strict=True):
            w.close()
            s.close()
        del perm
        files = []
        for b in range(buckets):
            path = spill / f"{b:04d}.arrow"
            with pa.memory_map(str(path)) as source:
                table = ipc.open_stream(source).read_all()
            table = table.take(pc.sort_indices(table.column("_pos")))
            pos = table.column("_pos").to_numpy()
            shard_of = pos // rows_per_shard
            for shard in np.unique(shard_of):
                lo, hi = np.searchsorted(shard_of, [shard, shard + 1])
                name = f"part-{int(shard):05d}.parquet"
                pq.write_table(
                    table.slice(lo, hi - lo).drop_columns(["_pos"]),
                    staging / name,
                    compression="zstd",
                )
                files.append(out_dir / name)
            path.unlink()
        shutil.rmtree(spill)
        (staging / "_mixture.json").write_text(
            _canonical(
                {
                    "mixture": str(mv.ref),
                    "content_hash": mv.content_hash,
                    "rows": mv.rows,
                    "shards": len(files),
                }
            )
            + "\n"
        )
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


# ----------------------------------------------------------------------------- reports


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
