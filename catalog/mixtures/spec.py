"""What a mixture is: its reference, the spec a curator writes (or a `mixture.toml`), and the
manifest of a version. No catalog access here: `plan` resolves a spec against the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from catalog.versions import Ref, VersionRef
from corpus.errors import KalmixError
from corpus.toml import read_toml

Progress = Callable[[int], None]


@dataclass(frozen=True)
class MixtureRef(Ref):
    """A mixture version, `name@vN`."""


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
    # How `kalmix mix search` found these weights (trials, model, validation); a record only,
    # planning ignores it. Left out of `to_dict` when empty, so other specs are unchanged.
    search: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weighting is None:
            object.__setattr__(self, "weighting", "explicit" if self.weights else "proportional")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("weights", "caps", "cap_shares", "instructions"):
            out[key] = dict(sorted(out[key].items()))
        if not out["search"]:
            del out["search"]
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
    "search": dict,
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
    raw = read_toml(path, what="spec file")
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
