"""The local evaluation suite: `mteb` tasks whose data is read from files instead of a hub.

Each `LocalTask` names its files and builds its mteb task from them: the task classes are in
`trainer/evaluation/classes.py`, the file readers in `trainer/evaluation/readers.py`. Two kinds
of task live here:

- MTEB's own tasks on the same data (`STSBenchmark`, `STSBenchmarkMultilingualSTS`, `LCQMC`,
  `BQ`, `Banking77Classification`), with MTEB's class and evaluation protocol (e.g. Banking77's
  10 logistic-regression experiments on 8 examples per label), so the numbers compare with the
  leaderboard. Where only part of MTEB's data is here the task runs on that part: `BQ` on
  `test` only (C-MTEB also scores `validation`), and `STSBenchmarkMultilingualSTS` on the
  languages that have files (en de es fr pl zh of its ten).
- Tasks derived from the same files, under `Kalmix*` names (never an MTEB task's name):
  STS on the ATEC+CCKS re-split (not MTEB's `ATEC` data), SNIPS intent classification,
  clustering of the Banking77 and SNIPS test texts by label, and retrieval and reranking built
  from STS-B test pairs in six languages (see `readers.stsb_search_split`).

The data folder is `KALMIX_EVAL_DATA` if set, else `[eval] data_dir` in `kalmix.toml`, else
`shared/data` beside the repository or beside the workspace (the layout of `../shared/data`,
described in its README). A task whose files are missing is reported and skipped by the suite;
asking for it by name is an error that lists the missing files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus.errors import KalmixError
from trainer.evaluation.classes import STSB_LANGS, kalmix_classes, kalmix_task, mteb_task
from trainer.evaluation.readers import read_labelled, read_pairs, stsb_search_split

EVAL_DATA_ENV = "KALMIX_EVAL_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]

MTEB_TYPES = {
    "STS": "sts",
    "Classification": "classification",
    "MultilabelClassification": "classification",
    "Clustering": "clustering",
    "PairClassification": "pair_classification",
    "Reranking": "reranking",
    "Retrieval": "retrieval",
    "InstructionRetrieval": "retrieval",
    "InstructionReranking": "reranking",
    "BitextMining": "bitext",
}


def kalmix_task_type(mteb_type: str) -> str:
    """The catalog's task type (`sts`, `retrieval`, ...) for an mteb task type."""
    return MTEB_TYPES.get(mteb_type, mteb_type.lower())


def eval_data_dir(
    settings: dict[str, Any] | None = None, workspace_root: Path | None = None
) -> Path:
    """Where the evaluation files are (see the module docstring for the order of lookup).

    An explicit setting (`KALMIX_EVAL_DATA`, then `[eval] data_dir`) is returned even when it
    does not exist, so that messages name it; otherwise the first default folder that exists.
    """
    if os.environ.get(EVAL_DATA_ENV):
        return Path(os.environ[EVAL_DATA_ENV]).expanduser()
    configured = ((settings or {}).get("eval") or {}).get("data_dir")
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_absolute() or workspace_root is None else workspace_root / path
    defaults = [REPO_ROOT.parent / "shared" / "data"]
    if workspace_root is not None:
        defaults.append(workspace_root.parent / "shared" / "data")
    return next((d for d in defaults if d.is_dir()), defaults[0])


@dataclass(frozen=True)
class LoadOptions:
    """How much of the data to load: `limit` rows per evaluated split (a quick check whose
    scores are stored under a `<split>-sampleN` split, never mixed with full runs), and which
    language subsets of a multilingual task (None: all that have files)."""

    limit: int | None = None
    subsets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LocalTask:
    """One task of the local suite: its files and how to build the mteb task from them."""

    name: str
    task_type: str
    description: str
    files: tuple[str, ...]  # relative to the data folder; `{lang}` is filled per subset
    build: Callable[[Path, LoadOptions], Any]
    subsets: tuple[str, ...] = ("default",)
    mteb_defined: bool = False

    def files_for(self, subset: str) -> list[str]:
        return [f.format(lang=subset) for f in self.files]

    def available_subsets(self, data_dir: Path) -> list[str]:
        return [s for s in self.subsets if all((data_dir / f).is_file() for f in self.files_for(s))]

    def missing_files(self, data_dir: Path) -> list[str]:
        return [f for s in self.subsets for f in self.files_for(s) if not (data_dir / f).is_file()]

    @property
    def multilingual(self) -> bool:
        return self.subsets != ("default",)

    def make(self, data_dir: Path, options: LoadOptions) -> Any:
        """The mteb task object, its data loaded; `KalmixError` when its files are missing."""
        available = self.available_subsets(data_dir)
        if not available:
            raise KalmixError(
                f"{self.name}: evaluation files missing under {data_dir}: "
                f"{', '.join(self.missing_files(data_dir))} (set {EVAL_DATA_ENV} to the folder "
                "that holds them)"
            )
        wanted = available
        if self.multilingual and options.subsets is not None:
            wanted = [s for s in available if s in options.subsets]
            if not wanted:
                raise KalmixError(
                    f"{self.name} has no subset among {', '.join(options.subsets)}; "
                    f"its subsets with files: {', '.join(available)}"
                )
        task = self.build(data_dir, LoadOptions(options.limit, tuple(wanted)))
        task.load_data()
        return task

    def data_files(self, data_dir: Path, subsets: Sequence[str]) -> dict[str, str]:
        """Relative path -> first 16 hex of its SHA-256, for the evaluation record."""
        out = {}
        for subset in subsets:
            for rel in self.files_for(subset):
                out[rel] = hashlib.sha256((data_dir / rel).read_bytes()).hexdigest()[:16]
        return out


# ---------------------------------------------------------------------------- building tasks


def _build_stsb(data_dir: Path, o: LoadOptions) -> Any:
    from datasets import DatasetDict

    def read() -> dict:
        return {
            lang: DatasetDict(
                {
                    split: read_pairs(data_dir / f"stsb/{lang}-{split}.csv", "score", o.limit)
                    for split in ("dev", "test")
                }
            )
            for lang in o.subsets
        }

    task = mteb_task("STSBenchmarkMultilingualSTS", read)
    task.hf_subsets = list(o.subsets)
    return task


def _build_classification(
    data_dir: Path, o: LoadOptions, folder: str, label: str, make: Callable[..., Any]
) -> Any:
    from datasets import Dataset, DatasetDict

    def split(name: str, limit: int | None) -> Dataset:
        texts, labels = read_labelled(data_dir / f"{folder}/{name}.csv", label, limit)
        return Dataset.from_dict({"text": texts, "label": labels})

    # the training split is never sampled: the protocol draws its few examples per label
    return make(
        lambda: DatasetDict({"train": split("train", None), "test": split("test", o.limit)})
    )


def _clustering_task(name: str, description: str, folder: str, label: str) -> LocalTask:
    """A clustering task on the test split of a labelled CSV (texts grouped by their label)."""

    def build(data_dir: Path, o: LoadOptions) -> Any:
        from datasets import Dataset, DatasetDict

        def read() -> DatasetDict:
            texts, labels = read_labelled(data_dir / f"{folder}/test.csv", label, o.limit)
            return DatasetDict({"test": Dataset.from_dict({"sentences": texts, "labels": labels})})

        return kalmix_task(kalmix_classes()[name], read, o.subsets)

    return LocalTask(name, "clustering", description, (f"{folder}/test.csv",), build)


def _search_task(description: str, *, rerank: bool) -> LocalTask:
    """Retrieval (or reranking) built from each language's STS-B test pairs."""
    name = "KalmixSTSBReranking" if rerank else "KalmixSTSBRetrieval"

    def build(data_dir: Path, o: LoadOptions) -> Any:
        def read() -> dict:
            return {
                lang: {
                    "test": stsb_search_split(data_dir / f"stsb/{lang}-test.csv", o.limit, rerank)
                }
                for lang in o.subsets
            }

        return kalmix_task(kalmix_classes()[name], read, o.subsets)

    task_type = "reranking" if rerank else "retrieval"
    files = ("stsb/{lang}-test.csv",)
    return LocalTask(name, task_type, description, files, build, subsets=tuple(STSB_LANGS))


def _pairs_task(
    name: str,
    description: str,
    rel: str,
    score: str,
    *,
    splits: list[str] | None = None,
    mteb_defined: bool = True,
) -> LocalTask:
    """An STS task on one CSV of scored sentence pairs (0-5 scores, or 0/1 labels as scores)."""

    def build(data_dir: Path, o: LoadOptions) -> Any:
        from datasets import DatasetDict

        def read() -> DatasetDict:
            return DatasetDict({"test": read_pairs(data_dir / rel, score, o.limit)})

        if name in kalmix_classes():
            return kalmix_task(kalmix_classes()[name], read, o.subsets)
        return mteb_task(name, read, splits)

    return LocalTask(name, "sts", description, (rel,), build, mteb_defined=mteb_defined)


LOCAL_TASKS: tuple[LocalTask, ...] = (
    _pairs_task(
        "STSBenchmark", "STS Benchmark test (English), MTEB's task", "stsb/en-test.csv", "score"
    ),
    LocalTask(
        "STSBenchmarkMultilingualSTS",
        "sts",
        "STS-B dev+test machine-translated (DeepL), MTEB's task on the languages present",
        ("stsb/{lang}-dev.csv", "stsb/{lang}-test.csv"),
        _build_stsb,
        subsets=tuple(STSB_LANGS),
        mteb_defined=True,
    ),
    _pairs_task(
        "LCQMC",
        "LCQMC test (Chinese question pairs, 0/1 scored as STS), C-MTEB's task",
        "pairs_zh/LCQMC-test.csv",
        "label",
    ),
    _pairs_task(
        "BQ",
        "BQ Corpus test (bank questions, 0/1 scored as STS), C-MTEB's task (test split only)",
        "pairs_zh/BQ_corpus-test.csv",
        "label",
        splits=["test"],
    ),
    _pairs_task(
        "KalmixATECCCKS",
        "ATEC+CCKS re-split test (0/1 scored as STS); not MTEB's ATEC data",
        "pairs_zh/ATEC_CCKS-test.csv",
        "label",
        mteb_defined=False,
    ),
    LocalTask(
        "Banking77Classification",
        "classification",
        "Banking77 intents, MTEB's task and protocol",
        ("banking77/train.csv", "banking77/test.csv"),
        lambda d, o: _build_classification(
            d, o, "banking77", "category", lambda r: mteb_task("Banking77Classification", r)
        ),
        mteb_defined=True,
    ),
    LocalTask(
        "KalmixSNIPSClassification",
        "classification",
        "SNIPS 7 intents, MTEB's classification protocol",
        ("snips/train.csv", "snips/test.csv"),
        lambda d, o: _build_classification(
            d,
            o,
            "snips",
            "label",
            lambda r: kalmix_task(kalmix_classes()["KalmixSNIPSClassification"], r, ()),
        ),
    ),
    _clustering_task(
        "KalmixBanking77Clustering",
        "Banking77 test texts clustered by intent",
        "banking77",
        "category",
    ),
    _clustering_task(
        "KalmixSNIPSClustering", "SNIPS test texts clustered by intent", "snips", "label"
    ),
    _search_task(
        "STS-B test pairs scored >= 4 as query -> relevant, other sentences as corpus",
        rerank=False,
    ),
    _search_task(
        "STS-B test: rerank each query's relevant + lexically closest sentences", rerank=True
    ),
)
LOCAL_BY_NAME = {t.name: t for t in LOCAL_TASKS}
