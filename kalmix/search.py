"""Mixture search: which weighting of the selected datasets trains the best proxy?

`kalmix mix search` samples weightings (a Dirichlet around the temperature-2 prior, plus the
fixed baselines proportional, uniform and temperature 2, all from `catalog.mixtures`' own
weighting code), trains the static proxy (`kalmix train --arch static`'s recipe) on each at the
same row budget, evaluates it on the local suite, fits a regression from weights to the
objective (`kalmix.search_fit`), validates the predicted best against the best baseline with
fresh seeds, and registers it as `NAME@vN` with the whole search in its spec.

Decisions, written down because resuming depends on them:

- Every trial is a real mixture version (`NAME-trials@vK`) and a real run with real scores in
  the catalog: the search is inspectable with the ordinary commands (`kalmix eval compare`).
  Mixtures are created here, in the parent process, one at a time; only training and
  evaluation run on the pool (catalog writes from the workers are short and retried on lock).
- The search lives in `<ws>/searches/NAME/sK/`: `search.json` (settings, pinned datasets, the
  trial weightings, each job's mixture) and `jobs/<job>.json` (a finished job's scores), each
  written atomically. A killed search rerun with the same options resumes: finished jobs are
  read back, a run cut short is resumed from its checkpoint. Different options for an
  unfinished search are refused; a finished search (registered) leaves the next one a new sK.
- Failures: a job that fails before any job has succeeded stops the search with its error
  (the settings are wrong, not the luck of one trial) and nothing is registered; later failures
  leave their trial out of the fit and are reported.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalog.db import Catalog
from catalog.mixtures import MixtureSpec, MixtureVersion, create_mixture, plan_mixture
from corpus import storage
from corpus.errors import KalmixError
from corpus.schema import suggest
from kalmix import search_fit

BASELINES = ("proportional", "uniform", "temperature")
TAU = 2.0  # the temperature of the prior and of the temperature baseline
MIN_TRIALS = 4  # the three baselines and at least one sampled weighting
VALIDATION_SEED = 1000  # validation seeds start here: never a seed the search chose on
SEARCHES = "searches"
# The proxy recipe of benchmarks/curation_lift.py: random init, so what it knows comes from
# the mixture; no checkpoints (a trial is short; a resumed one restarts from its last).
PROXY = {"arch": "static", "init": "random", "negatives_per_query": 3}


@dataclass(frozen=True)
class SearchConfig:
    """What a search is; resuming requires the same values (`name` and `executor` aside)."""

    where: str
    budget: int
    trials: int = 24
    objective: str = "mean"
    seeds: int = 2
    seed: int = 0
    tasks: tuple[str, ...] = ()
    epochs: float = 2.0
    batch_size: int | None = None

    def check(self) -> None:
        if self.trials < MIN_TRIALS:
            raise KalmixError(
                f"--trials must be at least {MIN_TRIALS} (the 3 baselines and one sampled "
                f"weighting), got {self.trials}"
            )
        if self.seeds < 1:
            raise KalmixError(f"--seeds must be at least 1, got {self.seeds}")
        if self.budget < 1:
            raise KalmixError(f"--budget must be a positive number of rows, got {self.budget}")


@dataclass(frozen=True)
class Job:
    """One training run of the search: a trial (or validation side) with one seed."""

    key: str  # "t03-seed1", "proposed-seed1000"
    trial: int | str  # trial index, or "proposed" / a baseline's name for validation
    seed: int
    run: str
    mixture: str | None = None  # NAME-trials@vK once created


@dataclass
class SearchState:
    """The durable state of one search folder (search.json)."""

    folder: Path
    config: SearchConfig
    datasets: list[str]  # pinned NAME@vN
    trials: list[dict]  # {"trial", "kind", "weights": {dataset: share}}
    jobs: dict[str, Job] = field(default_factory=dict)
    proposal: dict[str, float] | None = None
    registered: str | None = None

    def save(self) -> None:
        data = {
            "config": asdict(self.config),
            "datasets": self.datasets,
            "trials": self.trials,
            "jobs": [asdict(j) for j in self.jobs.values()],
            "proposal": self.proposal,
            "registered": self.registered,
        }
        write_atomic(self.folder / "search.json", data)

    def result(self, job: Job) -> dict | None:
        path = self.folder / "jobs" / f"{job.key}.json"
        return json.loads(path.read_text()) if path.exists() else None


def write_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a kill leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.replaced(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def objectives(cat: Catalog, tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """Objective names -> the tasks each averages: mean, mean_<type>, and every task."""
    from trainer.evaluation.suite import plan
    from trainer.evaluation.tasks import eval_data_dir

    planned = plan("local", tasks, eval_data_dir(cat.workspace.settings, cat.workspace.root))
    by_type: dict[str, list[str]] = {}
    for t in planned.tasks:
        by_type.setdefault(t.local.task_type if t.local else "other", []).append(t.name)
    names = [t.name for t in planned.tasks]
    out = {"mean": names, **{f"mean_{k}": v for k, v in sorted(by_type.items())}}
    out.update({n: [n] for n in names})
    return out


def check_objective(cat: Catalog, config: SearchConfig) -> None:
    known = objectives(cat, config.tasks)
    if config.objective not in known:
        raise KalmixError(
            f"unknown --objective {config.objective!r}{suggest(config.objective, list(known))}; "
            f"known: {', '.join(known)}"
        )


def _plan_weights(cat: Catalog, datasets: list[str], budget: int, weighting: str) -> np.ndarray:
    spec = MixtureSpec(datasets=datasets, weighting=weighting, tau=TAU, budget=budget)
    return np.array([e.weight for e in plan_mixture(cat, spec)])


def new_state(cat: Catalog, folder: Path, config: SearchConfig) -> SearchState:
    """Pin the datasets, compute the baselines' weights and sample the trial weightings."""
    entries = plan_mixture(cat, MixtureSpec(where=config.where))  # the selection, then budgets
    if len(entries) < 2:
        raise KalmixError(
            f"--where {config.where!r} selects {len(entries)} dataset "
            f"({', '.join(e.dataset for e in entries)}); a search needs at least 2"
        )
    datasets = [e.ref for e in entries]
    names = [e.dataset for e in entries]
    base = {w: _plan_weights(cat, datasets, config.budget, w) for w in BASELINES}
    rng = np.random.default_rng(config.seed)
    sampled = search_fit.dirichlet(base["temperature"], config.trials - len(BASELINES), rng)
    kinds = [*BASELINES, *["dirichlet"] * len(sampled)]
    weights = [*base.values(), *sampled]
    trials = [
        {"trial": i, "kind": kind, "weights": dict(zip(names, map(float, w), strict=True))}
        for i, (kind, w) in enumerate(zip(kinds, weights, strict=True))
    ]
    return SearchState(folder, config, datasets, trials)


def open_state(cat: Catalog, name: str, config: SearchConfig) -> tuple[SearchState, bool]:
    """The unfinished search NAME with these settings (resumed: True), or a new one."""
    root = cat.workspace.root / SEARCHES / name
    folders = sorted(root.glob("s*/search.json"), key=lambda p: int(p.parent.name[1:]))
    if folders:
        data = json.loads(folders[-1].read_text())
        if data.get("registered") is None:
            saved = SearchConfig(**{**data["config"], "tasks": tuple(data["config"]["tasks"])})
            if saved != config:
                differ = [k for k, v in asdict(saved).items() if asdict(config)[k] != v]
                raise KalmixError(
                    f"an unfinished search {name} in {folders[-1].parent} has other settings "
                    f"({', '.join(f'{k}={asdict(saved)[k]!r}' for k in differ)}): rerun with "
                    "them to resume it, or remove that folder"
                )
            state = SearchState(
                folders[-1].parent,
                saved,
                data["datasets"],
                data["trials"],
                {j["key"]: Job(**j) for j in data["jobs"]},
                data.get("proposal"),
            )
            return state, True
    number = int(folders[-1].parent.name[1:]) + 1 if folders else 1
    state = new_state(cat, root / f"s{number}", config)
    state.save()
    return state, False


def trial_jobs(state: SearchState, name: str) -> list[Job]:
    folder = state.folder.name
    return [
        state.jobs.get(key) or Job(key, t["trial"], s, f"{name}-{folder}-t{t['trial']:02d}-seed{s}")
        for t in state.trials
        for s in range(state.config.seeds)
        for key in [f"t{t['trial']:02d}-seed{s}"]
    ]


def _spec(state: SearchState, kind: str, weights: dict[str, float], seed: int) -> MixtureSpec:
    common = {"datasets": state.datasets, "budget": state.config.budget, "seed": seed}
    if kind in BASELINES:
        return MixtureSpec(weighting=kind, tau=TAU, **common)
    return MixtureSpec(weighting="explicit", weights=weights, **common)


def ensure_mixture(cat: Catalog, state: SearchState, name: str, job: Job, trial: dict) -> Job:
    """The job with its trial mixture created (once: recorded in search.json at once)."""
    if job.mixture is None:
        spec = _spec(state, trial["kind"], trial["weights"], job.seed)
        mv = create_mixture(cat, f"{name}-trials", spec)
        job = Job(job.key, job.trial, job.seed, job.run, str(mv.ref))
        state.jobs[job.key] = job
        state.save()
    return job


@dataclass(frozen=True)
class Runner:
    """How jobs run: `inline`, on a `local` process pool of `workers`, or on `ray`."""

    executor: str = "local"
    workers: int = 0
    address: str | None = None

    def map(self, ws_root: Path, proxy: dict, jobs: list[Job], logs: Path) -> Iterator:
        """(job, result) pairs as jobs finish; a result is {"scores": ...} or {"error": ...}.

        `proxy` holds the proxy's `epochs`, `batch_size` and the evaluation's `tasks`."""
        from corpus.executor import default_workers

        workers = min(self.workers or default_workers(), len(jobs)) or 1
        threads = max(1, default_workers() // workers)
        args = [(str(ws_root), asdict(j), proxy, str(logs), threads) for j in jobs]
        if self.executor == "inline":
            for job, arg in zip(jobs, args, strict=True):
                yield job, run_job(*arg[:-1], threads=0)
        elif self.executor == "ray":
            yield from self._ray(jobs, args)
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            from corpus.executor import spawn_context

            with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
                futures = {
                    pool.submit(run_job, *a[:-1], threads=a[-1]): j
                    for j, a in zip(jobs, args, strict=True)
                }
                try:
                    for future in as_completed(futures):
                        yield futures[future], future.result()
                finally:
                    for future in futures:
                        future.cancel()

    def _ray(self, jobs: list[Job], args: list[tuple]) -> Iterator:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(run_job)
        pending = {remote.remote(*a[:-1], threads=1): j for j, a in zip(jobs, args, strict=True)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref)


def run_job(ws_root: str, job: dict, proxy: dict, logs: str, *, threads: int) -> dict:
    """Train (or resume, or reuse) one job's proxy and evaluate it; its output goes to a log.

    Runs in a worker process (or inline: `threads` 0 leaves torch's threads alone). Errors come
    back as {"error": message}, so that one bad trial does not break the pool.
    """
    from catalog import runs
    from catalog.scores import compare_table
    from catalog.workspace import Workspace

    log = Path(logs) / f"{job['key']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out, redirect_stdout(out), redirect_stderr(out):
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            from trainer.config import TrainConfig
            from trainer.evaluation.run import EvalConfig, evaluate_many
            from trainer.train import train

            cat = Catalog.open(Workspace.load(Path(ws_root)))
            info = runs.get_run(cat, job["run"])
            if info is None:
                cfg = TrainConfig().override(
                    **PROXY,
                    seed=job["seed"],
                    epochs=proxy["epochs"],
                    batch_size=proxy["batch_size"],
                    checkpoint_every=1_000_000,
                )
                train(cat.workspace, run_name=job["run"], mixture=job["mixture"], cfg=cfg)
            elif info.status != "completed":
                train(cat.workspace, run_name=job["run"], resume=True)
            tasks = tuple(proxy["tasks"])
            try:
                row = compare_table(cat, runs=[job["run"]], include_reference=False, tasks=tasks)
            except KalmixError:  # not evaluated yet
                evaluate_many(
                    cat, [job["run"]], EvalConfig(suite="local", tasks=tasks, batch_size=512)
                )
                row = compare_table(cat, runs=[job["run"]], include_reference=False, tasks=tasks)
            scores = row.to_pylist()[0]
            return {"scores": {k: v for k, v in scores.items() if isinstance(v, float)}}
        except KalmixError as err:
            return {"error": str(err)}
        except Exception as err:  # noqa: BLE001 - reported with the trial, not a traceback
            return {"error": f"{type(err).__name__}: {err}"}


@dataclass
class SearchOutcome:
    """A registered search: the mixture, the record stored in its spec, and what happened."""

    mixture: MixtureVersion
    record: dict
    reused: int  # jobs read back from an earlier, killed run of the same search
    failures: list[str]


Report = Callable[[int, int, str], None]  # (jobs done, jobs in all, best so far)


def search(
    cat: Catalog,
    name: str,
    config: SearchConfig,
    *,
    runner: Runner,
    report: Report | None = None,
) -> SearchOutcome:
    """Run (or resume) the search NAME and register its proposed weighting as NAME@vN."""
    from catalog.versions import check_name

    check_name(name, "mixture")
    config.check()
    check_objective(cat, config)
    state, _ = open_state(cat, name, config)
    trials = {t["trial"]: t for t in state.trials}
    jobs = trial_jobs(state, name)
    todo = len(jobs) + 2 * config.seeds
    done, failures, reused = _execute(cat, state, name, jobs, trials, runner, report, todo)
    per_trial = _per_trial(state, jobs, done)
    finished = [t for t in per_trial if t["scores"]]
    if len(finished) < 3:
        raise KalmixError(
            f"only {len(finished)} trials finished ({'; '.join(failures)}); a fit needs 3: "
            "rerun the search to retry the failed ones; nothing registered"
        )
    names = list(state.trials[0]["weights"])
    weights = np.array([[t["weights"][n] for n in names] for t in finished])
    model = search_fit.fit(
        names=names, weights=weights, y=np.array([t["objective"] for t in finished])
    )
    trusted = model.cv_r2 is not None and model.cv_r2 > 0
    proposal = _proposal(state, model, names, None if trusted else finished)
    baselines = [t for t in finished if t["kind"] in BASELINES]
    if not baselines:
        raise KalmixError("no baseline trial finished: rerun the search; nothing registered")
    best = max(baselines, key=lambda t: t["objective"])
    sides = {"proposed": {"kind": "explicit", "weights": proposal}, best["kind"]: best}
    seeds = [VALIDATION_SEED + s for s in range(config.seeds)]
    checks = [
        state.jobs.get(f"{side}-seed{s}")
        or Job(f"{side}-seed{s}", side, s, f"{name}-{state.folder.name}-{side}-seed{s}")
        for side in sides
        for s in seeds
    ]
    got, failed, again = _execute(cat, state, name, checks, sides, runner, report, todo, len(jobs))
    failures += failed
    validation = _validation(config.objective, got, checks, best["kind"])
    record = {
        "objective": config.objective,
        "where": config.where,
        "budget": config.budget,
        "seeds": config.seeds,
        "tasks": list(config.tasks),
        "proxy": {**PROXY, "epochs": config.epochs, "batch_size": config.batch_size},
        "folder": str(state.folder.relative_to(cat.workspace.root)),
        "trials": per_trial,
        "model": model.to_dict(),
        "proposed": proposal,
        "proposed_from": "regression" if trusted else "best trial (cross-validated R² <= 0)",
        "predicted": float(model.predict(np.array([proposal[n] for n in names]))[0]),
        "best_baseline": {"kind": best["kind"], "objective": best["objective"]},
        "validation": validation,
        "failures": failures,
    }
    spec = _spec(state, "explicit", proposal, 0)
    mv = create_mixture(cat, name, MixtureSpec(**{**spec.to_dict(), "search": record}))
    state.registered = str(mv.ref)
    state.save()
    return SearchOutcome(mv, record, reused + again, failures)


def _proposal(
    state: SearchState, model: search_fit.Fit, names: list[str], measured: list[dict] | None
) -> dict[str, float]:
    """The predicted best weighting, or with `measured` (a fit that predicts no better than
    the mean out of fold: R² <= 0) the best trial's: extrapolating such a fit would propose a
    corner of the simplex on noise. Computed once and kept: a resumed search validates the
    proposal it started validating, even if a retried trial would now move the fit."""
    if state.proposal is None:
        if measured:
            top = max(measured, key=lambda t: t["objective"])
            best = np.array([top["weights"][n] for n in names])
        else:
            prior = np.array(
                [state.trials[BASELINES.index("temperature")]["weights"][n] for n in names]
            )
            rng = np.random.default_rng(state.config.seed + 1)
            best, _ = search_fit.propose(model, prior, rng)
        state.proposal = {n: round(float(w), 6) for n, w in zip(names, best, strict=True)}
        state.save()
    return state.proposal


def _execute(
    cat: Catalog,
    state: SearchState,
    name: str,
    jobs: list[Job],
    trials: dict,
    runner: Runner,
    report: Report | None,
    total: int,
    offset: int = 0,
) -> tuple[dict[str, dict], list[str], int]:
    label = "validating, best" if offset else "best trial"
    """Run the jobs not done yet; their scores by key, the failures, how many were read back."""
    done = {j.key: r["scores"] for j in jobs if (r := state.result(j)) is not None}
    reused = len(done)
    todo = [ensure_mixture(cat, state, name, j, trials[j.trial]) for j in jobs if j.key not in done]
    failures: list[str] = []
    succeeded = offset > 0 or bool(done)

    def tell() -> None:
        if report:
            best = _best(state, done)
            report(offset + len(done) + len(failures), total, f"{label} {best}" if best else label)

    tell()
    proxy = asdict(state.config)
    for job, result in runner.map(cat.workspace.root, proxy, todo, state.folder / "logs"):
        if "error" in result:
            if not succeeded:
                raise KalmixError(
                    f"trial {job.key} failed: {result['error']} (log: "
                    f"{state.folder / 'logs' / job.key}.log); nothing registered"
                )
            failures.append(f"{job.key}: {result['error']}")
        else:
            succeeded = True
            entry = {"run": job.run, "mixture": job.mixture, "scores": result["scores"]}
            write_atomic(state.folder / "jobs" / f"{job.key}.json", entry)
            done[job.key] = result["scores"]
        tell()
    return done, failures, reused


def _best(state: SearchState, done: dict[str, dict]) -> str:
    objective = state.config.objective
    by_trial: dict[str, list[float]] = {}
    for key, scores in done.items():
        if scores.get(objective) is not None:
            by_trial.setdefault(key.rsplit("-seed", 1)[0], []).append(scores[objective])
    if not by_trial:
        return ""
    key, values = max(by_trial.items(), key=lambda kv: statistics.fmean(kv[1]))
    return f"{key} {objective} {statistics.fmean(values):.4f}"


def _per_trial(state: SearchState, jobs: list[Job], done: dict[str, dict]) -> list[dict]:
    """Each trial with its per-seed scores and its objective (mean over the seeds that ran)."""
    out = []
    for trial in state.trials:
        scores = [done[j.key] for j in jobs if j.trial == trial["trial"] and j.key in done]
        values = [s[state.config.objective] for s in scores if s.get(state.config.objective)]
        out.append(
            {**trial, "scores": scores, "objective": statistics.fmean(values) if values else None}
        )
    return out


def _validation(objective: str, got: dict[str, dict], checks: list[Job], baseline: str) -> dict:
    """Proposed minus the best baseline, paired by seed, over the fresh seeds."""
    value = {(j.trial, j.seed): got[j.key].get(objective) for j in checks if j.key in got}
    seeds = sorted({j.seed for j in checks})
    proposed = [value.get(("proposed", s)) for s in seeds]
    base = [value.get((baseline, s)) for s in seeds]
    diffs = [p - b for p, b in zip(proposed, base, strict=True) if p is not None and b is not None]
    return {
        "baseline": baseline,
        "seeds": seeds,
        "proposed": proposed,
        "baseline_scores": base,
        "diff_mean": statistics.fmean(diffs) if diffs else None,
        "diff_sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
    }
