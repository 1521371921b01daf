"""`kalmix mix search` and `kalmix mix attribute`: mixture weights and data effects measured
with the static proxy. Mounted on the `mix` group (`kalmix/commands/mix.py`); the work is in
`kalmix.search` and `kalmix.attribution`, imported inside the commands."""

from __future__ import annotations

import time
from typing import Any

import typer

from catalog.vocabulary import ATTRIBUTION_METHODS, ATTRIBUTION_UNITS
from corpus.console import console, print_json, print_table, progress
from corpus.vocabulary import check_executor, executor_help
from kalmix.commands.mix import app as mix_app
from kalmix.commands.options import ADDRESS, JSON, grouped, open_catalog, split_list

EXECUTORS = ("local", "ray", "inline")

# How the proxies of a search or an attribution are trained, evaluated and run: one table, so
# that both commands take the same options and hand them on as one dict.
PROXY_OPTIONS: dict[str, tuple[Any, Any]] = {
    "seeds": (
        int,
        typer.Option(2, "--seeds", help="Proxy seeds per mixture (search: fresh ones validate)."),
    ),
    "tasks": (
        str,
        typer.Option(
            None, "--tasks", help="Comma list of local-suite tasks (default: all, full splits)."
        ),
    ),
    "epochs": (float, typer.Option(2.0, "--epochs", help="Proxy epochs over each mixture.")),
    "batch_size": (
        int,
        typer.Option(
            None, "--batch-size", help="Proxy batch size (default: the static recipe's 512)."
        ),
    ),
    "executor": (
        str,
        typer.Option(
            "local",
            "--executor",
            help=executor_help(EXECUTORS, "Proxy runs are independent: one per worker."),
        ),
    ),
    "workers": (
        int,
        typer.Option(0, "--workers", help="Processes with --executor local (0 = one per core)."),
    ),
    "address": (str, ADDRESS),
}


def register(root: typer.Typer) -> None:
    """Add `search` and `attribute` to the `mix` group (which `mix.register` mounts)."""
    mix_app.command("search")(search)
    mix_app.command("attribute")(attribute)


def _runner(proxy: dict[str, Any]):
    from kalmix.search import Runner

    return Runner(check_executor(proxy["executor"], EXECUTORS), proxy["workers"], proxy["address"])


@grouped(PROXY_OPTIONS, into="proxy")
def search(
    name: str = typer.Argument(..., help="Mixture to register the best weighting as (NAME@vN)."),
    where: str = typer.Option(
        ..., "--where", help="SQL WHERE over the datasets view: the datasets to weight (2 or more)."
    ),
    budget: int = typer.Option(..., "--budget", help="Rows of every trial mixture."),
    trials: int = typer.Option(
        24, "--trials", help="Weightings tried: the 3 baselines plus Dirichlet samples (>= 4)."
    ),
    objective: str = typer.Option(
        "mean", "--objective", help="What to maximise: mean, mean_<task type> or a task name."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled weightings."),
    as_json: bool = JSON,
    proxy: dict[str, Any] = None,  # type: ignore[assignment]  # filled by @grouped
) -> None:
    """Search mixture weightings with the static proxy and register the predicted best.

    Every trial is a mixture of the selected datasets at --budget rows (proportional, uniform,
    temperature 2, then Dirichlet draws around temperature 2), a static proxy trained on it
    per seed (kalmix train --arch static, random init) and its local-suite scores. A ridge
    regression from weights to the objective (its cross-validated R² is printed) ranks many
    candidate weightings; the mean of the best is validated with fresh seeds against the best
    baseline and registered as NAME@vN, its spec holding the whole search (kalmix mix show).
    A killed search resumes when run again with the same options (state in
    searches/NAME/ of the workspace; each job's log in its logs/).

    Example: kalmix mix search searched --where "not is_eval" --trials 24 --budget 60000 --seeds 2
    """
    from kalmix.commands.mix import _as_dict
    from kalmix.search import SearchConfig
    from kalmix.search import search as run_search

    config = SearchConfig(
        where=where,
        budget=budget,
        trials=trials,
        objective=objective,
        seeds=proxy["seeds"],
        seed=seed,
        tasks=split_list(proxy["tasks"]),
        epochs=proxy["epochs"],
        batch_size=proxy["batch_size"],
    )
    runner = _runner(proxy)
    cat = open_catalog()
    start = time.perf_counter()
    with progress() as bar:
        outcome = run_search(cat, name, config, runner=runner, report=_reporter(bar, name))
    if as_json:
        print_json(_as_dict(outcome.mixture))
        return
    print_search(outcome.record)
    for failure in outcome.failures:
        console.print(f"failed: {failure}", markup=False)
    console.print(
        f"mix search: {len(outcome.record['trials'])} trials x {config.seeds} seeds "
        f"({outcome.reused} jobs reused) -> {outcome.mixture.ref}: {outcome.mixture.rows} rows; "
        f"{time.perf_counter() - start:.1f}s"
    )


def _reporter(bar: Any, title: str):
    """A progress callback (done, total, best so far) drawing on `bar`'s one task."""
    task = bar.add_task(title, total=None)

    def report(done: int, total: int, best: str) -> None:
        bar.update(task, completed=done, total=total, description=f"{title}: {best}")

    return report


def print_search(record: dict) -> None:
    """The search behind a mixture: its trials, its model, and the validation."""
    import pyarrow as pa

    objective = record["objective"]
    trials = sorted(record["trials"], key=lambda t: -(t["objective"] or float("-inf")))
    rows = [
        {"trial": t["trial"], "kind": t["kind"], objective: t["objective"], "seeds": len(t["scores"]),
         **{k: round(v, 3) for k, v in t["weights"].items()}}
        for t in trials
    ]  # fmt: skip
    print_table(pa.Table.from_pylist(rows), title=f"search: {len(rows)} trials by {objective}")
    model, val = record["model"], record["validation"]
    r2 = "n/a" if model["cv_r2"] is None else f"{model['cv_r2']:.3f}"
    console.print(
        f"searched: {len(rows)} trials x {record['seeds']} seeds, budget {record['budget']:,}; "
        f"{model['model']} (alpha {model['alpha']:g}) on {model['trials']} trials, "
        f"cross-validated R² {r2}; proposed: {record.get('proposed_from', 'regression')}, "
        f"predicted {objective} {record['predicted']:.4f} (best "
        f"baseline {record['best_baseline']['kind']} {record['best_baseline']['objective']:.4f})",
        markup=False,
    )
    if val["diff_mean"] is not None:
        sd = f" ± {val['diff_sd']:.4f}" if val["diff_sd"] is not None else ""
        console.print(
            f"validated on fresh seeds {', '.join(map(str, val['seeds']))}: proposed - "
            f"{val['baseline']} = {val['diff_mean']:+.4f}{sd} ({objective})",
            markup=False,
        )


@grouped(PROXY_OPTIONS, into="proxy")
def attribute(
    ref: str = typer.Argument(..., help="Mixture version NAME@vN (or NAME for the latest)."),
    by: str = typer.Option("dataset", "--by", help=" | ".join(ATTRIBUTION_UNITS)),
    method: str = typer.Option(
        "auto",
        "--method",
        help=f"{' | '.join(ATTRIBUTION_METHODS)}: auto is the regression where the mixture came "
        "from kalmix mix search, else leave-one-out proxy runs.",
    ),
    as_json: bool = JSON,
    proxy: dict[str, Any] = None,  # type: ignore[assignment]  # filled by @grouped
) -> None:
    """The effect of each dataset (or category) of a mixture on each task-type mean.

    Effect = the metric of the mixture minus that of the mixture without the unit (the others
    keep their weights, same budget). For a mixture from kalmix mix search it is predicted by
    the search's regression, one fit per metric (say --method leave-one-out to measure
    instead); otherwise it is measured: one static proxy per unit and seed on the mixture
    without it, and on the mixture itself, paired by seed. Stored in the catalog's
    attributions table; printed with where it came from.

    Example: kalmix mix attribute searched@v1 --by category
    """
    import pyarrow as pa

    from kalmix.attribution import AttributionConfig
    from kalmix.attribution import attribute as run_attribution

    config = AttributionConfig(
        by=by,
        method=method,
        seeds=proxy["seeds"],
        tasks=split_list(proxy["tasks"]),
        epochs=proxy["epochs"],
        batch_size=proxy["batch_size"],
    )
    runner = _runner(proxy)
    cat = open_catalog()
    with progress(transient=True) as bar:
        result = run_attribution(cat, ref, config, runner=runner, report=_reporter(bar, ref))
    if as_json:
        print_json(result.to_dict())
        return
    table: dict[str, dict[str, Any]] = {}
    for e in result.effects:
        cell = "" if e.effect is None else f"{e.effect:+.4f}"
        cell += f" ± {e.sd:.4f}" if e.sd is not None else ""
        table.setdefault(e.unit, {by: e.unit})[e.metric] = cell
    print_table(pa.Table.from_pylist(list(table.values())), title=f"{result.mixture.ref} by {by}")
    console.print(
        f"mix attribute: {result.mixture.ref}, {len(table)} {by} effects on "
        f"{len({e.metric for e in result.effects})} means ({result.method}): {result.note}",
        markup=False,
    )
