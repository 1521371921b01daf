"""One evaluation: a run or a model folder, a set of tasks, scores into the catalog.

Order of work, chosen so that bad input fails before anything slow and nothing is half-written:

1. resolve the target (a run's exported model, or a model folder) and plan the tasks;
2. load every task's data (local files, or the offline Hugging Face cache), then the model;
3. run `mteb.evaluate` task by task through one `CachedEncoder` (each text embedded once);
4. write mteb's result JSON into a staging folder, insert all score rows in one catalog
   transaction, then rename the staging folder to `<out>/<timestamp>/`.

A failure anywhere leaves no score row and no result folder. Results live under
`<ws>/runs/<run>/eval/` for a run and `<ws>/runs/_models/<name>/eval/` for a model folder.

The local `STSBenchmark` and `Banking77Classification` are MTEB's first versions: mteb marks them
superseded by `.v2` (deduplicated or corrected data), but the published scores that runs are
compared against are on the first versions, so that warning is silenced here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.db import Catalog
from catalog.runs import MODEL_FOLDER, get_run
from catalog.scores import SAMPLE_SPLIT_MARK, ScoreRow, record_scores
from corpus.console import progress
from corpus.embedding import check_model_dir, default_model_path
from corpus.errors import KalmixError
from corpus.schema import suggest
from trainer.evaluation.suite import (
    NotCached,
    cache_howto,
    hf_cache_dir,
    hub_offline,
    official_task,
    plan,
)
from trainer.evaluation.tasks import LoadOptions, eval_data_dir, kalmix_task_type

MODELS_FOLDER = "_models"  # under runs/: evaluations of model folders that are not runs


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on. `limit` samples that many rows per split of the local tasks (a quick
    check, stored under a `<split>-sampleN` split); `subsets` restricts multilingual tasks."""

    suite: str | None = None
    tasks: tuple[str, ...] = ()
    subsets: tuple[str, ...] | None = None
    limit: int | None = None
    batch_size: int = 64
    device: str | None = None


@dataclass(frozen=True)
class EvalTarget:
    model: str  # the `scores.model` value: the run name, or a name for the model folder
    run: str | None
    model_dir: Path
    out_dir: Path
    mixture: str | None = None


@dataclass
class EvalReport:
    target: EvalTarget
    rows: list[ScoreRow]
    results_dir: Path
    notes: list[str] = field(default_factory=list)
    embedded: int = 0
    requested: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        tasks = len({r.task for r in self.rows})
        trained = f" (mixture {self.target.mixture})" if self.target.mixture else ""
        return (
            f"eval: {self.target.model}{trained} on {tasks} tasks -> {len(self.rows)} score rows; "
            f"embedded {self.embedded} of {self.requested} texts (rest cached); "
            f"results in {self.results_dir}; {self.seconds:.1f}s"
        )


def _folder_name(name: str) -> str:
    return name.replace("/", "__").replace("\\", "__")


def resolve_target(cat: Catalog, text: str, name: str | None = None) -> EvalTarget:
    """A run name (its exported model) or a model folder; clear errors otherwise."""
    ws = cat.workspace
    looks_like_path = "/" in text or text.startswith(".") or text.startswith("~")
    run = None if looks_like_path else get_run(cat, text)
    if run is None and Path(text).expanduser().exists():
        folder = check_model_dir(text)
        inside = folder.parent.parent == ws.runs_dir.resolve() and folder.name == MODEL_FOLDER
        run = get_run(cat, folder.parent.name) if inside and not name else None
        if run is None:
            default = folder == default_model_path().resolve()
            model = name or (
                "all-MiniLM-L6-v2"
                if default
                else (folder.parent.name if folder.name == MODEL_FOLDER else folder.name)
            )
            out = ws.runs_dir / MODELS_FOLDER / _folder_name(model) / "eval"
            return EvalTarget(model, None, folder, out)
    if run is None:
        runs = [r["name"] for r in cat.query("SELECT name FROM runs").to_pylist()]
        raise KalmixError(
            f"{text!r} is neither a run nor a model folder{suggest(text, runs)}; pass a run name "
            "(kalmix train makes them) or the path of a sentence-transformers model folder"
        )
    if name:
        raise KalmixError("--name is for model folders; a run's scores carry the run's name")
    if not (
        (run.model_path / "modules.json").exists() or (run.model_path / "config.json").exists()
    ):
        why = f": {run.error}" if run.error else ""
        raise KalmixError(
            f"run {run.name} has no exported model at {run.model_path} (status {run.status}{why}); "
            "a run exports its model when training completes"
        )
    return EvalTarget(run.name, run.name, run.model_path, run.path / "eval", run.mixture_ref)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library chatter that is not for the user: per-call progress bars of `datasets`
    and transformers, mteb's 'superseded' notices (see module docstring), deprecations."""
    import datasets
    import transformers

    bars = datasets.is_progress_bar_enabled()
    model_bars = transformers.utils.logging.is_progress_bar_enabled()
    mteb_log = logging.getLogger("mteb")
    level = mteb_log.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*superseded.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # Small sampled splits leave some classes unpredicted; the score is still defined.
        warnings.filterwarnings("ignore", message=".*ill-defined and being set to 0.*")
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        mteb_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            mteb_log.setLevel(level)
            if model_bars:
                transformers.utils.logging.enable_progress_bar()
            if bars:
                datasets.enable_progress_bars()


def _load_model(target: EvalTarget, device: str | None) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(target.model_dir), device=device, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any load failure means an unusable model folder
        first = str(err).splitlines()[0] if str(err) else ""
        raise KalmixError(
            f"cannot load a sentence-transformers model from {target.model_dir}: "
            f"{type(err).__name__}: {first}"
        ) from None


def _rows(target: EvalTarget, task: Any, task_result: Any, limit: int | None) -> list[ScoreRow]:
    task_type = kalmix_task_type(task.metadata.type)  # TaskResult's looks in mteb's registry
    rows = []
    for split, entries in task_result.scores.items():
        for entry in entries:
            rows.append(
                ScoreRow(
                    model=target.model,
                    run=target.run,
                    task=task_result.task_name,
                    task_type=task_type,
                    split=f"{split}{SAMPLE_SPLIT_MARK}{limit}" if limit else split,
                    subset=entry["hf_subset"],
                    main_score=float(entry["main_score"]),
                    metrics={k: v for k, v in entry.items() if k != "hf_subset"},
                    mteb_version=task_result.mteb_version,
                )
            )
    return rows


def evaluate(
    cat: Catalog, target_text: str, config: EvalConfig, name: str | None = None
) -> EvalReport:
    """Evaluate a run or model folder on the planned tasks and record the scores."""
    return evaluate_many(cat, [target_text], config, names=[name])[0]


def evaluate_many(
    cat: Catalog,
    target_texts: list[str],
    config: EvalConfig,
    *,
    names: list[str | None] | None = None,
) -> list[EvalReport]:
    """Evaluate several runs or model folders on the same tasks, loading the task data once.

    Every target is resolved before any work, so a bad name fails first; each target's scores
    are committed as soon as its evaluation ends (one target's failure keeps the earlier ones).
    Loading mteb and the task data costs about 15 s on 2 cores, which dominates the evaluation
    of a static proxy model: comparing seeds and mixtures in one call pays it once.
    """
    import mteb

    from trainer.evaluation.encoder import CachedEncoder

    start = time.monotonic()
    if config.limit is not None and config.limit < 10:
        raise KalmixError(f"--limit must be at least 10 rows, got {config.limit}")
    if config.batch_size < 1:
        raise KalmixError(f"--batch-size must be at least 1, got {config.batch_size}")
    ws = cat.workspace
    names = names or [None] * len(target_texts)
    targets = [resolve_target(cat, t, n) for t, n in zip(target_texts, names, strict=True)]
    data_dir = eval_data_dir(ws.settings, ws.root)
    todo = plan(config.suite, config.tasks, data_dir)
    if config.limit is not None and any(t.source == "official" for t in todo.tasks):
        raise KalmixError(
            "--limit samples the local suite's files; leave it out for official tasks"
        )
    options = LoadOptions(config.limit, config.subsets)
    notes = list(todo.notes)
    reports = []
    with hub_offline(), _quiet(), progress() as bar:
        loading = bar.add_task("loading data", total=len(todo.tasks))
        loaded = []
        uncached = []
        for planned in todo.tasks:
            bar.update(loading, description=f"loading {planned.name}")
            try:
                if planned.local is not None:
                    task = planned.local.make(data_dir, options)
                else:
                    task = official_task(planned.name, config.subsets)
            except NotCached as err:
                if todo.strict:
                    raise
                uncached.append(planned.name)
                notes.append(f"skipped {planned.name}: {err.dataset} is not in the HF cache")
            except KalmixError as err:
                if todo.strict:
                    raise
                notes.append(f"skipped {planned.name}: {err}")
            else:
                loaded.append((planned, task))
            bar.advance(loading)
        if uncached:
            notes.append(f"HF cache {hf_cache_dir()}: {cache_howto(uncached)}")
        if not loaded:
            raise KalmixError("no task could run: " + "; ".join(notes))
        for target in targets:
            model = _load_model(target, config.device)
            encoder = CachedEncoder(model, target.model_dir, ws.cache_dir)
            results: list[tuple[Any, Any, Any]] = []  # (planned, task, TaskResult)
            for planned, task in loaded:
                job = bar.add_task(f"{target.model} {planned.name}: embedding", total=None)
                encoder.on_encoded = lambda n, job=job: bar.advance(job, n)
                result = mteb.evaluate(
                    encoder,
                    task,
                    cache=None,
                    overwrite_strategy="always",
                    co2_tracker=False,
                    show_progress_bar=False,
                    encode_kwargs={"batch_size": config.batch_size, "show_progress_bar": False},
                )
                task_result = result.task_results[0]
                main = ", ".join(
                    f"{e['main_score']:.4f}" for es in task_result.scores.values() for e in es
                )
                bar.update(
                    job,
                    description=f"{target.model} {planned.name}: {main[:60]}",
                    total=1,
                    completed=1,
                )
                results.append((planned, task, task_result))
            rows = [r for _, task, res in results for r in _rows(target, task, res, config.limit)]
            results_dir = _record(cat, target, config, results, rows, data_dir, notes)
            reports.append(
                EvalReport(
                    target,
                    rows,
                    results_dir,
                    notes,
                    encoder.embedded,
                    encoder.requested,
                    time.monotonic() - start,
                )
            )
            start = time.monotonic()
    return reports


def _record(
    cat: Catalog,
    target: EvalTarget,
    config: EvalConfig,
    results: list[tuple[Any, Any, Any]],
    rows: list[ScoreRow],
    data_dir: Path,
    notes: list[str],
) -> Path:
    """Result files staged, score rows committed, then the files renamed into place."""
    import mteb

    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = target.out_dir / stamp
    if final.exists():
        final = target.out_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"
    staging = target.out_dir / f".staging-{uuid.uuid4().hex}"
    try:
        staging.mkdir(parents=True)
        for planned, _, task_result in results:
            task_result.to_disk(staging / f"{planned.name}.json")
        record = {
            "model": target.model,
            "run": target.run,
            "mixture": target.mixture,
            "model_dir": str(target.model_dir),
            "mteb_version": mteb.__version__,
            "config": {k: v for k, v in config.__dict__.items()},
            "tasks": {
                planned.name: {
                    "source": planned.source,
                    "files": planned.local.data_files(data_dir, task_result.hf_subsets)
                    if planned.local
                    else None,
                }
                for planned, _, task_result in results
            },
            "data_dir": str(data_dir),
            "notes": notes,
        }
        (staging / "evaluation.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise KalmixError(
            f"cannot write evaluation results under {target.out_dir}: {err}"
        ) from None
    try:
        record_scores(cat, rows)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(final)
    return final
