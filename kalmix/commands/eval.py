"""`kalmix eval ...`: evaluate a run or model folder with mteb, import reference scores, compare.

`kalmix eval RUN_OR_MODEL_PATH [OPTIONS]` is the main form; click groups cannot take a
positional argument next to subcommands, so `EvalGroup` routes any first word that is not a
subcommand to the `run` subcommand (`kalmix eval X` == `kalmix eval run X`).
Heavy imports (mteb, torch) happen inside the commands, so `kalmix --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer.core import TyperGroup

# The catalog (DuckDB, Arrow) is imported inside the commands too (kalmix/commands/__init__.py).
from corpus.console import console, print_json, print_table
from corpus.errors import KalmixError
from kalmix.commands.options import JSON, command_group, open_catalog, split_list

if TYPE_CHECKING:
    import click

    from catalog.workspace import Workspace

HELP = """Evaluate with mteb; scores go to the catalog.

\b
  kalmix eval RUN_OR_MODEL_PATH [--suite local|official|all] [--tasks A,B] [--limit N]
  kalmix eval list-tasks
  kalmix eval import-reference FILE.csv
  kalmix eval compare [--runs a,b]

The local suite runs from the files in the evaluation-data folder ($KALMIX_EVAL_DATA, else ../shared/data); official tasks run from the local Hugging Face cache, never downloaded.
"""


class EvalGroup(TyperGroup):
    """A group whose first argument may be a run or model path instead of a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app, register = command_group("eval", HELP, cls=EvalGroup)


def _runs_matching(cat, patterns: tuple[str, ...]) -> list[str]:
    """Names as given, with shell patterns (`proxy-*`) expanded over the evaluated models."""
    import fnmatch

    if not any(ch in p for p in patterns for ch in "*?["):
        return list(patterns)
    known = [r["model"] for r in cat.query("SELECT DISTINCT model FROM scores").to_pylist()]
    out: list[str] = []
    for pattern in patterns:
        hits = (
            sorted(fnmatch.filter(known, pattern))
            if any(c in pattern for c in "*?[")
            else [pattern]
        )
        if not hits:
            raise KalmixError(f"--runs {pattern!r} matches no evaluated run or model")
        out += [h for h in hits if h not in out]
    return out


@app.command("run")
def run(
    targets: list[str] = typer.Argument(
        ...,
        metavar="RUN_OR_MODEL_PATH...",
        help="Run names or sentence-transformers folders; several share one load of the data.",
    ),
    suite: str = typer.Option(
        None,
        "--suite",
        help="local (files, default), official (mteb tasks with published scores, from the "
        "Hugging Face cache) or all.",
    ),
    tasks: str = typer.Option(
        None, "--tasks", help="Comma-separated task names (local first, then any mteb task)."
    ),
    subsets: str = typer.Option(
        None, "--subsets", help="Language subsets of multilingual tasks, e.g. en,zh."
    ),
    limit: int = typer.Option(
        None,
        "--limit",
        help="Quick check: a seeded sample of N rows per split of local tasks; stored under "
        "split '<split>-sampleN', compared only by `eval compare --samples`.",
    ),
    name: str = typer.Option(
        None, "--name", help="Name for a model folder's scores (default: the folder's name)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Encoding batch size."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: best available)."),
    as_json: bool = JSON,
) -> None:
    """Evaluate runs (their exported models) or model folders; record the scores.

    Several targets share one load of mteb and the task data; with one target its score table
    is printed, with several one line each (then compare them with `kalmix eval compare`).

    Each text is embedded once per model (cached in the workspace). mteb's result JSON is kept under runs/<run>/eval/ (runs/_models/<name>/eval/ for a folder).

    Example: kalmix eval my-run other-run --tasks STSBenchmark,Banking77Classification
    """
    from trainer.evaluation.run import EvalConfig, evaluate_many

    cat = open_catalog()
    config = EvalConfig(
        suite=suite,
        tasks=split_list(tasks),
        subsets=split_list(subsets) or None,
        limit=limit,
        batch_size=batch_size,
        device=device,
    )
    if name and len(targets) > 1:
        raise KalmixError("--name names one model folder's scores; evaluate one target with it")
    reports = evaluate_many(cat, targets, config, names=[name] * len(targets))
    if as_json:
        print_json([r.__dict__ for report in reports for r in report.rows])
        return
    for note in reports[0].notes:
        console.print(f"[yellow]note:[/] {note}")
    import pyarrow as pa

    for report in reports if len(reports) == 1 else []:
        table = pa.table(
            {
                "task": [r.task for r in report.rows],
                "type": [r.task_type for r in report.rows],
                "split": [r.split for r in report.rows],
                "subset": [r.subset for r in report.rows],
                "main_score": [round(r.main_score, 4) for r in report.rows],
            }
        )
        print_table(table, title=f"{report.target.model}: main scores")
    for report in reports:
        console.print(report.line())
    if len(reports) > 1:
        runs = ",".join(r.target.model for r in reports)
        console.print(f"compare them with: kalmix eval compare --runs {runs}")


@app.command("list-tasks")
def list_tasks(
    as_json: bool = JSON,
) -> None:
    """List the local and official suites, and whether each task's data is here.

    Local tasks need their files in the evaluation-data folder; official ones their dataset in
    the Hugging Face cache. Any other mteb task name also works with --tasks when cached.

    Example: kalmix eval list-tasks
    """
    import pyarrow as pa

    from trainer.evaluation.suite import task_listing
    from trainer.evaluation.tasks import eval_data_dir

    ws = _workspace_or_none()
    data_dir = eval_data_dir(ws.settings if ws else None, ws.root if ws else None)
    rows = task_listing(data_dir)
    if as_json:
        print_json(rows)
        return
    print_table(pa.Table.from_pylist(rows), title=f"evaluation tasks (data: {data_dir})", width=48)


def _workspace_or_none() -> Workspace | None:
    from catalog.workspace import Workspace

    try:
        return Workspace.resolve()
    except KalmixError:
        return None


@app.command("import-reference")
def import_reference(
    file: Path = typer.Argument(
        ..., help="CSV with model, task, split, subset, main_score (e.g. reference_scores.csv)."
    ),
) -> None:
    """Load published scores of known models as reference rows (re-import replaces them).

    Example: kalmix eval import-reference ../shared/data/reference_scores.csv
    """
    from catalog.scores import import_reference as load
    from trainer.evaluation.suite import task_type_of

    result = load(open_catalog(), file, task_type_of)
    console.print(result.line())


@app.command("compare")
def compare(
    runs: str = typer.Option(
        None, "--runs", help="Comma-separated runs or model names (default: all evaluated)."
    ),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated task columns."),
    reference: bool = typer.Option(
        True, "--reference/--no-reference", help="Include published reference models."
    ),
    samples: bool = typer.Option(
        False, "--samples", help="Compare the quick checks (eval --limit) instead of full splits."
    ),
    means: bool = typer.Option(
        False, "--means", help="Only the overall and task-type means (a narrow table)."
    ),
    by_mixture: bool = typer.Option(
        False,
        "--by-mixture",
        help="Group runs by mixture name (the seeds of an experiment): mean ± sd over runs.",
    ),
    baseline: str = typer.Option(
        None,
        "--baseline",
        help="With --by-mixture: add each group's lift over this mixture, paired by seed.",
    ),
    as_json: bool = JSON,
) -> None:
    """Table of runs, models and reference models x tasks, with means per task type.

    Each cell is a task's main score from the latest evaluation (mean over language subsets);
    a mean is empty when the model lacks one of the tasks it averages. --runs takes names or
    shell patterns (proxy-*). --by-mixture turns the runs of several seeds into one row per
    mixture (mean ± standard deviation), and --baseline adds the paired lift of each over it.

    Example: kalmix eval compare --runs 'proxy-*' --by-mixture --baseline raw
    """
    from catalog.scores import compare_table, lift_table

    cat = open_catalog()
    picked = _runs_matching(cat, split_list(runs)) if runs else None
    if baseline and not by_mixture:
        raise KalmixError("--baseline goes with --by-mixture")
    if by_mixture:
        if not picked:
            raise KalmixError("--by-mixture needs --runs: the runs of the mixtures to compare")
        rows = lift_table(cat, picked, baseline=baseline, samples=samples)
        if as_json:
            print_json(rows)
            return
        import pyarrow as pa

        metrics = [k for k in rows[0] if k.startswith("mean") and not k.endswith("_sd")]
        cells = {
            "mixture": [r["group"] for r in rows],
            "runs": [str(r["runs"]) for r in rows],
            **{
                m: [
                    ""
                    if r[m] is None
                    else f"{r[m]:+.4f} ± {r[m + '_sd']:.4f}"
                    if " - " in r["group"]
                    else f"{r[m]:.4f} ± {r[m + '_sd']:.4f}"
                    for r in rows
                ]
                for m in metrics
            },
        }
        print_table(pa.table(cells), title="by mixture: mean ± sd over runs (lift: paired)")
        return
    table = compare_table(
        cat,
        runs=picked,
        include_reference=reference,
        tasks=split_list(tasks) or None,
        samples=samples,
    )
    if means:
        keep = ("model", "kind", "mixture")
        table = table.select([c for c in table.column_names if c in keep or c.startswith("mean")])
    if as_json:
        print_json(table)
        return
    if table.num_rows == 0:
        console.print(
            "no scores yet: evaluate with kalmix eval RUN, or kalmix eval import-reference"
        )
        return
    print_table(table, title="main scores (latest evaluation per model and task)", width=40)
