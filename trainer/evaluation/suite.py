"""Which tasks an evaluation runs: the local suite, official mteb tasks, or names the user gave.

- `local`: every task of `tasks.LOCAL_TASKS` whose files are present (the others are reported,
  not run).
- `official`: the MTEB tasks that have published scores in `reference_scores.csv`
  (`OFFICIAL_SUITE`), each run from the local Hugging Face cache when its dataset is there;
  the others are reported with how to put them in the cache.
- `all`: both, a task present in both running once from the local files (same data).
- `--tasks A,B`: exactly those, strictly (a missing file or dataset is an error). A name is
  looked up in the local suite first, then among mteb's tasks, unless `--suite` says which;
  unknown names get close-name suggestions.

Official tasks load with the Hugging Face hub switched to offline mode (`hub_offline`), so
nothing is ever downloaded at evaluation time.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus.errors import KalmixError
from trainer.evaluation.classes import kalmix_classes
from trainer.evaluation.tasks import LOCAL_BY_NAME, LOCAL_TASKS, LocalTask, kalmix_task_type

SUITES = ("local", "official", "all")
OFFICIAL_SUITE = (
    "STSBenchmark",
    "STS22",
    "LCQMC",
    "BQ",
    "ATEC",
    "STSB",
    "Banking77Classification",
    "TwentyNewsgroupsClustering",
    "AskUbuntuDupQuestions",
    "SciDocsRR",
    "SciFact",
    "NFCorpus",
    "ArguAna",
)


@dataclass(frozen=True)
class PlannedTask:
    name: str
    source: str  # "local" (files) or "official" (Hugging Face cache)
    local: LocalTask | None = None


@dataclass
class Plan:
    tasks: list[PlannedTask]
    strict: bool  # tasks named by the user: a missing dataset is an error, not a note
    notes: list[str] = field(default_factory=list)


@functools.cache
def _mteb_names() -> tuple[str, ...]:
    """Every task name mteb knows, superseded, private and beta ones included. Read from the
    task classes: instantiating them (`mteb.get_tasks`) prints a warning per beta task."""
    from mteb.get_tasks import TASK_LIST

    return tuple(cls.metadata.name for cls in TASK_LIST)


def unknown_task(name: str, pool: Sequence[str] | None = None) -> KalmixError:
    """An error for an unknown task name, with the closest local and mteb names."""
    names = list(dict.fromkeys(pool if pool is not None else [*LOCAL_BY_NAME, *_mteb_names()]))
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return KalmixError(f"unknown task {name!r}{hint} (list them with: kalmix eval list-tasks)")


def plan(suite: str | None, names: Sequence[str], data_dir: Path) -> Plan:
    """The tasks to run, in order, with notes on what is skipped and why."""
    if suite is not None and suite not in SUITES:
        raise KalmixError(f"unknown suite {suite!r}; one of: {', '.join(SUITES)}")
    if names:
        return Plan([_named(n, suite) for n in dict.fromkeys(names)], strict=True)
    out = Plan([], strict=False)
    if suite in (None, "local", "all"):
        for task in LOCAL_TASKS:
            available = task.available_subsets(data_dir)
            if not available:
                out.notes.append(
                    f"skipped {task.name}: files missing under {data_dir}: "
                    f"{', '.join(task.missing_files(data_dir))}"
                )
                continue
            if task.multilingual and len(available) < len(task.subsets):
                absent = [s for s in task.subsets if s not in available]
                out.notes.append(f"{task.name}: no files for {', '.join(absent)}; runs the rest")
            out.tasks.append(PlannedTask(task.name, "local", task))
        if suite != "all" and not out.tasks:
            raise KalmixError(
                f"no local evaluation data under {data_dir} (expected stsb/, banking77/, snips/, "
                "pairs_zh/ as in ../shared/data); set KALMIX_EVAL_DATA to that folder"
            )
    if suite in ("official", "all"):
        local = {t.name for t in out.tasks}
        out.tasks += [PlannedTask(n, "official") for n in OFFICIAL_SUITE if n not in local]
    return out


def _named(name: str, suite: str | None) -> PlannedTask:
    if suite != "official" and name in LOCAL_BY_NAME:
        return PlannedTask(name, "local", LOCAL_BY_NAME[name])
    if suite == "local":
        if name in _mteb_names():
            raise KalmixError(
                f"{name} is not in the local suite; run it from the Hugging Face cache with "
                "--suite official"
            )
        raise unknown_task(name, list(LOCAL_BY_NAME))
    if name not in _mteb_names():
        raise unknown_task(name)
    return PlannedTask(name, "official")


@contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face hub and `datasets` in offline mode (cache only) for the enclosed code."""
    import datasets.config
    import huggingface_hub.constants as hub

    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    os.environ.update(dict.fromkeys(env, "1"))
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class NotCached(KalmixError):
    """An official task whose dataset is not in the local Hugging Face cache."""

    def __init__(self, task: str, dataset: str, revision: str) -> None:
        self.task, self.dataset = task, dataset
        super().__init__(
            f"{task}: dataset {dataset} (revision {revision[:12]}) is not in the local Hugging "
            f"Face cache ({hf_cache_dir()}); {cache_howto([task])}"
        )


def hf_cache_dir() -> str:
    """The `datasets` cache folder official tasks load from (HF_HOME / HF_DATASETS_CACHE)."""
    import datasets.config

    return str(datasets.config.HF_DATASETS_CACHE)


def cache_howto(names: Sequence[str]) -> str:
    """How to put the datasets of `names` in the cache of this offline machine."""
    listed = ", ".join(f"'{n}'" for n in names)
    which = "it" if len(names) == 1 else "them"
    return (
        f"to cache {which}, on a machine with internet and the same mteb version run: HF_HOME=DIR "
        f'python -c "import mteb; [t.load_data() for t in mteb.get_tasks(tasks=[{listed}])]", '
        "then copy DIR here and set HF_HOME=DIR (see docs/evaluation.md)"
    )


def official_task(name: str, subsets: Sequence[str] | None = None) -> Any:
    """An mteb task by name with its data loaded from the local Hugging Face cache.

    Call inside `hub_offline()`. A dataset that is not cached raises `NotCached`, which names
    it and says how to put it in the cache.
    """
    import mteb

    try:
        task = mteb.get_task(name)
    except KeyError:
        raise unknown_task(name) from None
    if subsets is not None and task.metadata.is_multilingual:
        keep = [s for s in task.hf_subsets if s in subsets]
        if not keep:
            raise KalmixError(
                f"{name} has no subset among {', '.join(subsets)}; its subsets: "
                f"{', '.join(task.hf_subsets)}"
            )
        task.hf_subsets = keep
    try:
        task.load_data()
    except (ConnectionError, FileNotFoundError):  # offline hub: not in the cache
        dataset = task.metadata.dataset
        raise NotCached(name, dataset["path"], dataset["revision"]) from None
    return task


def hf_cached(name: str) -> bool:
    """Whether some version of the task's dataset is in the Hugging Face cache (a cheap look
    at the cache folders, for listings; loading is the real test)."""
    import datasets.config
    import huggingface_hub.constants as hub
    import mteb

    path = mteb.get_task(name).metadata.dataset["path"]
    return (Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___")).exists() or (
        Path(hub.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}"
    ).exists()


def task_type_of(name: str) -> str | None:
    """The catalog task type of a local or mteb task name (None when unknown)."""
    if name in LOCAL_BY_NAME:
        return LOCAL_BY_NAME[name].task_type
    import mteb

    try:
        return kalmix_task_type(mteb.get_task(name).metadata.type)
    except KeyError:
        return None


def task_listing(data_dir: Path) -> list[dict[str, Any]]:
    """One row per local-suite and official-suite task: what it is and whether its data is here."""
    import mteb

    rows = []
    for task in LOCAL_TASKS:
        cls = kalmix_classes().get(task.name) or type(mteb.get_task(task.name))
        available = task.available_subsets(data_dir)
        missing = task.missing_files(data_dir)
        rows.append(
            {
                "task": task.name,
                "suite": "local",
                "type": task.task_type,
                "definition": "mteb" if task.mteb_defined else "kalmix",
                "subsets": ",".join(available) if task.multilingual else "default",
                "main_score": cls.metadata.main_score,
                "data": "files" if not missing else f"missing {', '.join(missing)}",
                "description": task.description,
            }
        )
    for name in OFFICIAL_SUITE:
        meta = mteb.get_task(name).metadata
        rows.append(
            {
                "task": name,
                "suite": "official",
                "type": kalmix_task_type(meta.type),
                "definition": "mteb",
                "subsets": ",".join(meta.hf_subsets),
                "main_score": meta.main_score,
                "data": "HF cache" if hf_cached(name) else f"not cached ({meta.dataset['path']})",
                "description": meta.description.split(". ")[0][:80],
            }
        )
    return rows
