"""Evaluation scores in the catalog: rows written by `kalmix eval`, reference rows, comparisons.

One `scores` row per (model or run, task, split, language subset): the task's main score, every
metric mteb returned (JSON), the mteb version and when. All rows of one evaluation go in one
write transaction, so an evaluation is either fully recorded or not at all, and they share one
`evaluated_at` (DuckDB's `now()` is the transaction's start), which is how "the latest
evaluation" of a model is found. A run's rows carry its name, so a join with `runs` gives the
mixture version it was trained on: scores compare mixtures.

Reference rows (`is_reference`) are published scores of known models, imported from a CSV shaped
like `../shared/data/reference_scores.csv`; importing again replaces rows with the same
(model, task, split, subset), so the import is idempotent.

Quick checks on a sample of a split are stored under a split named `<split>-sample<N>` and never
enter `compare_table`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog.db import Catalog
from corpus.errors import KalmixError

SAMPLE_SPLIT_MARK = "-sample"
REFERENCE_COLUMNS = ("model", "task", "split", "subset", "main_score")


@dataclass(frozen=True)
class ScoreRow:
    model: str
    task: str
    task_type: str | None
    split: str
    subset: str
    main_score: float
    metrics: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    is_reference: bool = False
    mteb_version: str | None = None


def _arrow(rows: Sequence[ScoreRow]) -> pa.Table:
    return pa.table(
        {
            "run": pa.array([r.run for r in rows], pa.string()),
            "model": [r.model for r in rows],
            "is_reference": pa.array([r.is_reference for r in rows], pa.bool_()),
            "task": [r.task for r in rows],
            "task_type": pa.array([r.task_type for r in rows], pa.string()),
            "split": [r.split for r in rows],
            "subset": [r.subset for r in rows],
            "main_score": pa.array([r.main_score for r in rows], pa.float64()),
            "metrics": [json.dumps(r.metrics, sort_keys=True, default=str) for r in rows],
            "mteb_version": pa.array([r.mteb_version for r in rows], pa.string()),
        }
    )


_INSERT = """
    INSERT INTO scores(run, model, is_reference, task, task_type, split, subset, main_score,
                       metrics, mteb_version, evaluated_at)
    SELECT run, model, is_reference, task, task_type, split, subset, main_score,
           metrics::JSON, mteb_version, now()::TIMESTAMP
    FROM new_scores
"""


def record_scores(cat: Catalog, rows: Sequence[ScoreRow]) -> int:
    """Insert the rows of one evaluation in one transaction; returns how many."""
    if not rows:
        return 0
    table = _arrow(rows)
    with cat.write() as con:
        con.register("new_scores", table)
        con.execute(_INSERT)
        con.unregister("new_scores")
    return len(rows)


def read_reference_csv(path: Path) -> list[ScoreRow]:
    """Reference rows from a CSV with columns model, task, split, subset, main_score (and
    optionally revision, source_path, kept in `metrics`); main_score on the 0-1 scale."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise KalmixError(
                    f"{path} lacks column(s) {', '.join(missing)}; a reference CSV needs "
                    f"{', '.join(REFERENCE_COLUMNS)} (like ../shared/data/reference_scores.csv)"
                )
            raw = list(reader)
    except FileNotFoundError:
        raise KalmixError(f"reference file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise KalmixError(f"cannot read reference file {path}: {err}") from None
    rows = []
    for line, r in enumerate(raw, start=2):
        try:
            score = float(r["main_score"])
        except ValueError:
            raise KalmixError(
                f"{path}:{line}: main_score {r['main_score']!r} is not a number"
            ) from None
        if not (math.isfinite(score) and -1.0 <= score <= 1.0):
            raise KalmixError(f"{path}:{line}: main_score {score} is not on the 0-1 scale")
        if not all(r[c] for c in ("model", "task", "split")):
            raise KalmixError(f"{path}:{line}: model, task and split must not be empty")
        extra = {k: v for k, v in r.items() if k not in REFERENCE_COLUMNS and k and v}
        rows.append(
            ScoreRow(
                model=r["model"],
                task=r["task"],
                task_type=None,
                split=r["split"],
                subset=r["subset"] or "default",
                main_score=score,
                metrics={"main_score": score, **extra},
                is_reference=True,
            )
        )
    if not rows:
        raise KalmixError(f"{path} has no rows")
    keys = [(r.model, r.task, r.split, r.subset) for r in rows]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise KalmixError(f"{path} has (model, task, split, subset) {dup} more than once")
    return rows


@dataclass(frozen=True)
class ReferenceImport:
    rows: int
    replaced: int
    models: int
    tasks: int

    def line(self) -> str:
        return (
            f"import-reference: {self.rows} rows ({self.models} models x {self.tasks} tasks); "
            f"{self.replaced} earlier reference rows replaced"
        )


def import_reference(
    cat: Catalog, path: Path, task_type_of: Callable[[str], str | None] = lambda task: None
) -> ReferenceImport:
    """Load a reference CSV as `is_reference` rows, replacing the same keys (idempotent)."""
    rows = [replace(r, task_type=task_type_of(r.task)) for r in read_reference_csv(path)]
    table = _arrow(rows)
    with cat.write() as con:
        con.register("new_scores", table)
        replaced = con.execute(
            """
            DELETE FROM scores s USING new_scores n
            WHERE s.is_reference AND s.model = n.model AND s.task = n.task
              AND s.split = n.split AND s.subset = n.subset
            """
        ).fetchall()[0][0]
        con.execute(_INSERT)
        con.unregister("new_scores")
    return ReferenceImport(
        rows=len(rows),
        replaced=int(replaced),
        models=len({r.model for r in rows}),
        tasks=len({r.task for r in rows}),
    )


def compare_table(
    cat: Catalog,
    runs: Sequence[str] | None = None,
    include_reference: bool = True,
    tasks: Sequence[str] | None = None,
    samples: bool = False,
) -> pa.Table:
    """Models x tasks: each task's main score (mean over its language subsets, test split when
    it has one) from each model's latest evaluation of it, plus means per task type and overall.

    `runs` picks evaluated runs or models by name (default: all). Columns are `tasks` (default:
    the tasks the picked models were evaluated on, or every reference task when none was).
    A mean is left empty for a model that lacks one of the tasks it averages, so means are
    always over the same tasks (MTEB's convention). Reference models appear when
    `include_reference` and they have a score for at least one of the columns.
    `samples` compares the quick checks (`--limit` splits) instead of full splits; published
    reference scores are on full splits, so they are left out then.
    """
    include_reference = include_reference and not samples
    split_filter = "LIKE" if samples else "NOT LIKE"
    per_task = cat.query(
        f"""
        WITH latest AS (
            SELECT * FROM scores
            WHERE split {split_filter} '%{SAMPLE_SPLIT_MARK}%'
            QUALIFY evaluated_at = max(evaluated_at)
                OVER (PARTITION BY model, run, is_reference, task)
        )
        SELECT l.model, l.run, l.is_reference, l.task, any_value(l.task_type) AS task_type,
               coalesce(avg(l.main_score) FILTER (WHERE l.split LIKE 'test%'), avg(l.main_score))
                   AS score,
               max(l.evaluated_at) AS evaluated_at,
               any_value(r.mixture || '@v' || r.mixture_version) AS mixture
        FROM latest l LEFT JOIN runs r ON r.name = l.run
        GROUP BY l.model, l.run, l.is_reference, l.task
        """
    ).to_pylist()
    evaluated = [r for r in per_task if not r["is_reference"]]
    if runs is not None:
        wanted = set(runs)
        unknown = wanted - {r["model"] for r in evaluated} - {r["run"] for r in evaluated}
        if unknown:
            known = sorted({r["model"] for r in evaluated})
            raise KalmixError(
                f"no scores for {', '.join(sorted(unknown))}; evaluated: "
                f"{', '.join(known) or 'none yet (run kalmix eval RUN)'}"
            )
        evaluated = [r for r in evaluated if r["model"] in wanted or r["run"] in wanted]
    reference = [r for r in per_task if r["is_reference"]] if include_reference else []
    columns = list(tasks) if tasks else sorted({r["task"] for r in evaluated or reference})
    types = {r["task"]: r["task_type"] or "other" for r in per_task if r["task"] in columns}
    columns = sorted(columns, key=lambda t: (types.get(t, "other"), t))
    entries: dict[tuple, dict[str, Any]] = {}
    for r in evaluated + reference:
        if r["task"] not in columns:
            continue
        key = (r["model"], r["run"], r["is_reference"])
        entry = entries.setdefault(
            key,
            {
                "model": r["model"],
                "kind": "reference" if r["is_reference"] else ("run" if r["run"] else "model"),
                "mixture": r["mixture"],
                "evaluated_at": r["evaluated_at"],
                "scores": {},
            },
        )
        entry["scores"][r["task"]] = r["score"]
        entry["evaluated_at"] = max(entry["evaluated_at"], r["evaluated_at"])
    ordered = sorted(
        entries.values(),
        key=lambda e: (e["kind"] == "reference", -e["evaluated_at"].timestamp(), e["model"]),
    )
    task_types = sorted(set(types.values()))

    def mean(entry: dict[str, Any], names: list[str]) -> float | None:
        values = [entry["scores"].get(t) for t in names]
        return sum(values) / len(values) if values and None not in values else None

    data: dict[str, list] = {
        "model": [e["model"] for e in ordered],
        "kind": [e["kind"] for e in ordered],
        "mixture": [e["mixture"] for e in ordered],
        "mean": [mean(e, columns) for e in ordered],
    }
    for task_type in task_types:
        names = [t for t in columns if types.get(t, "other") == task_type]
        data[f"mean_{task_type}"] = [mean(e, names) for e in ordered]
    for task in columns:
        data[task] = [e["scores"].get(task) for e in ordered]
    schema = pa.schema(
        [
            (name, pa.string() if name in ("model", "kind", "mixture") else pa.float64())
            for name in data
        ]
    )
    return pa.table(data, schema=schema)


def lift_table(
    cat: Catalog, runs: Sequence[str], *, baseline: str | None = None, samples: bool = False
) -> list[dict[str, Any]]:
    """Runs grouped by mixture name: mean and standard deviation over the group's runs (its
    seeds) of the overall and task-type means, then each group's lift over `baseline`.

    A mixture version fixes its seed, so the seeds of one experiment are versions of one mixture
    name (`raw@v1`, `raw@v2`, ...): grouping by name gathers them. The lift is paired: for every
    seed that both groups trained with (the run config's `seed`), the group's mean minus the
    baseline's, then the mean and spread of those differences. Pairing removes what the seed
    does to both sides alike, which is most of a small proxy's spread.
    """
    table = compare_table(cat, runs=runs, include_reference=False, samples=samples)
    names = table.column("model").to_pylist()
    info = {
        r["name"]: (r["mixture"], json.loads(r["config"] or "{}").get("seed"))
        for r in cat.query("SELECT name, mixture, config FROM runs").to_pylist()
    }
    not_runs = [n for n in names if n not in info or info[n][0] is None]
    if not_runs:
        raise KalmixError(
            f"--by-mixture groups training runs by mixture; {', '.join(not_runs)} "
            "is not a run trained on a mixture"
        )
    metrics = [c for c in table.column_names if c == "mean" or c.startswith("mean_")]
    values = {m: table.column(m).to_pylist() for m in metrics}
    groups: dict[str, dict[Any, dict[str, float | None]]] = {}
    for i, name in enumerate(names):
        mixture, seed = info[name]
        groups.setdefault(mixture, {})[seed if seed is not None else name] = {
            m: values[m][i] for m in metrics
        }
    if baseline is not None and baseline not in groups:
        raise KalmixError(
            f"baseline mixture {baseline!r} has no compared run; groups: {', '.join(groups)}"
        )

    def spread(xs: list[float | None]) -> tuple[float | None, float | None]:
        xs = [x for x in xs if x is not None]
        if not xs:
            return None, None
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return mean, sd

    out = []
    for mixture, by_seed in groups.items():
        row: dict[str, Any] = {"group": mixture, "runs": len(by_seed)}
        for m in metrics:
            row[m], row[f"{m}_sd"] = spread([r[m] for r in by_seed.values()])
        out.append(row)
    for mixture, by_seed in groups.items():
        if baseline is None or mixture == baseline:
            continue
        base = groups[baseline]
        paired = sorted(set(by_seed) & set(base), key=str)
        row = {"group": f"{mixture} - {baseline}", "runs": len(paired)}
        for m in metrics:
            diffs = [
                by_seed[s][m] - base[s][m]
                for s in paired
                if by_seed[s][m] is not None and base[s][m] is not None
            ]
            row[m], row[f"{m}_sd"] = spread(diffs)
        out.append(row)
    return out
