"""Data attribution: what each dataset (or category) of a mixture version does to each score.

The effect of a unit on a metric (the overall `mean` and each `mean_<task type>`) is the
metric of the mixture minus the metric of the same mixture without the unit's datasets (the
others keep their weights, renormalised, at the same row budget). Two ways to get it:

- `regression`, for a mixture `kalmix mix search` registered: the search's trials already say
  how the metrics move with the weights; a ridge fit per metric (`kalmix.search_fit`, the
  search's own model) predicts both mixtures. Free, but only as good as the fit's R².
- `leave-one-out`: a static proxy trained per unit on the mixture without it, and on the
  mixture itself, with the same seeds (paired), evaluated on the local suite: one run per unit
  and seed. Runs are named after the mixture, unit and seed, so a killed attribution run again
  reuses the finished ones.

The result goes to the catalog's `attributions` table (`catalog.attributions`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from catalog import runs
from catalog.attributions import Effect, record_attribution
from catalog.db import Catalog
from catalog.mixtures import MixtureSpec, MixtureVersion, create_mixture, resolve_mixture
from catalog.vocabulary import ATTRIBUTION_METHODS, ATTRIBUTION_UNITS
from corpus.errors import KalmixError
from kalmix import search_fit
from kalmix.search import Job, Report, Runner


@dataclass(frozen=True)
class AttributionConfig:
    """How to attribute: by dataset or category; the method (auto: regression where the mixture
    came from a search); and, for leave-one-out, the proxy's seeds, epochs, batch and tasks."""

    by: str = "dataset"
    method: str = "auto"
    seeds: int = 2
    tasks: tuple[str, ...] = ()
    epochs: float = 2.0
    batch_size: int | None = None


@dataclass
class Attribution:
    mixture: MixtureVersion
    by: str
    method: str
    note: str  # where the effects come from, in words
    effects: list[Effect]

    def to_dict(self) -> dict:
        return {
            "mixture": str(self.mixture.ref),
            "by": self.by,
            "method": self.method,
            "note": self.note,
            "effects": [asdict(e) for e in self.effects],
        }


def units(mv: MixtureVersion, by: str) -> dict[str, list[str]]:
    """Unit -> the datasets of the mixture in it."""
    out: dict[str, list[str]] = {}
    for e in mv.entries:
        out.setdefault(e.dataset if by == "dataset" else e.category, []).append(e.dataset)
    return out


def attribute(
    cat: Catalog,
    ref: str,
    config: AttributionConfig,
    *,
    runner: Runner,
    report: Report | None = None,
) -> Attribution:
    """Measure (or predict) each unit's effect, record it in the catalog and return it."""
    if config.by not in ATTRIBUTION_UNITS:
        raise KalmixError(f"--by must be one of {', '.join(ATTRIBUTION_UNITS)}, got {config.by!r}")
    if config.method not in ATTRIBUTION_METHODS:
        raise KalmixError(
            f"--method must be one of {', '.join(ATTRIBUTION_METHODS)}, got {config.method!r}"
        )
    mv = resolve_mixture(cat, ref)
    groups = units(mv, config.by)
    if len(groups) < 2:
        raise KalmixError(
            f"{mv.ref} has one {config.by} ({', '.join(groups)}): attribution compares the "
            f"mixture with and without each {config.by}, so it needs at least 2"
        )
    search = mv.spec.get("search")
    method = config.method
    if method == "auto":
        method = "regression" if search else "leave-one-out"
    if method == "regression" and not search:
        raise KalmixError(
            f"{mv.ref} was not made by kalmix mix search, so it has no regression; "
            "use --method leave-one-out"
        )
    if method == "regression":
        effects, note = _regression(mv, groups, search)
    else:
        if config.seeds < 1:
            raise KalmixError(f"--seeds must be at least 1, got {config.seeds}")
        effects, note = _leave_one_out(cat, mv, groups, config, runner, report)
    record_attribution(
        cat,
        mixture=mv.name,
        version=mv.version,
        unit_kind=config.by,
        method=method,
        effects=effects,
    )
    return Attribution(mv, config.by, method, note, effects)


def _metrics(scores: dict) -> list[str]:
    return sorted(k for k in scores if k == "mean" or k.startswith("mean_"))


def _without(weights: np.ndarray, drop: np.ndarray) -> np.ndarray:
    out = np.where(drop, 0.0, weights)
    return out / out.sum()


def _regression(
    mv: MixtureVersion, groups: dict[str, list[str]], search: dict
) -> tuple[list[Effect], str]:
    trials = [t for t in search["trials"] if t["scores"]]
    names = list(trials[0]["weights"])
    x = np.array([[t["weights"][n] for n in names] for t in trials])
    total = sum(mv.spec["weights"].values())
    own = np.array([mv.spec["weights"][n] / total for n in names])
    effects, r2 = [], {}
    for metric in _metrics(trials[0]["scores"][0]):
        y = np.array([statistics.fmean(s[metric] for s in t["scores"]) for t in trials])
        model = search_fit.fit(names=names, weights=x, y=y)
        r2[metric] = model.cv_r2
        full = float(model.predict(own)[0])
        for unit, datasets in groups.items():
            drop = np.isin(names, datasets)
            effect = full - float(model.predict(_without(own, drop))[0])
            effects.append(Effect(unit, metric, effect, None, len(trials)))
    shown = "n/a" if r2.get("mean") is None else f"{r2['mean']:.3f}"
    note = (
        f"predicted by the ridge regression of the search's {len(trials)} trials (cross-validated "
        f"R² of mean {shown}), not measured"
    )
    return effects, note


def _loo_spec(mv: MixtureVersion, drop: list[str]) -> MixtureSpec:
    """The mixture's spec over its pinned versions without `drop`: the same weighting, caps and
    budget (a mixture without a budget takes, like its parent, all the rows that fit)."""
    spec = {k: v for k, v in mv.spec.items() if k not in ("search", "where")}
    keep = [e for e in mv.entries if e.dataset not in drop]
    spec["datasets"] = [e.ref for e in keep]
    names = {e.dataset for e in keep}
    for key in ("weights", "caps", "cap_shares", "instructions"):
        spec[key] = {k: v for k, v in spec.get(key, {}).items() if k in names}
    return MixtureSpec.from_dict(spec)


def _leave_one_out(
    cat: Catalog,
    mv: MixtureVersion,
    groups: dict[str, list[str]],
    config: AttributionConfig,
    runner: Runner,
    report: Report | None,
) -> tuple[list[Effect], str]:
    prefix = f"{mv.name}-v{mv.version}"
    jobs = []
    for unit, datasets in {"full": [], **{f"without-{u}": d for u, d in groups.items()}}.items():
        for seed in range(config.seeds):
            run = f"{prefix}-{unit}-seed{seed}"
            existing = runs.get_run(cat, run)
            if existing is not None:
                mixture = existing.mixture_ref
            elif not datasets:
                mixture = str(mv.ref)
            else:
                mixture = str(create_mixture(cat, f"{prefix}-loo", _loo_spec(mv, datasets)).ref)
            jobs.append(Job(f"{unit}-seed{seed}", unit, seed, run, mixture))
    logs = cat.workspace.root / "attributions" / prefix / "logs"
    proxy = {"epochs": config.epochs, "batch_size": config.batch_size, "tasks": config.tasks}
    got: dict[str, dict] = {}
    if report:
        report(0, len(jobs), "leave-one-out")
    for job, result in runner.map(cat.workspace.root, proxy, jobs, logs):
        if "error" in result:
            raise KalmixError(
                f"run {job.run} failed: {result['error']} (log: {Path(logs) / job.key}.log); "
                "nothing recorded"
            )
        got[job.key] = result["scores"]
        if report:
            report(len(got), len(jobs), f"leave-one-out: {job.key} done")
    effects = []
    for metric in _metrics(got["full-seed0"]):
        for unit in groups:
            diffs = [
                got[f"full-seed{s}"][metric] - got[f"without-{unit}-seed{s}"][metric]
                for s in range(config.seeds)
            ]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else None
            effects.append(Effect(unit, metric, statistics.fmean(diffs), sd, len(diffs)))
    note = (
        f"measured by leave-one-out proxy runs: the mixture and the mixture without each "
        f"{config.by}, {config.seeds} seed(s) each, paired"
    )
    return effects, note
