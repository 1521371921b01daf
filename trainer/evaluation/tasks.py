"""The local evaluation suite: `mteb` tasks whose data is read from files instead of a hub.

Two kinds of task live here:

- MTEB's own tasks on the same data (`STSBenchmark`, `STSBenchmarkMultilingualSTS`, `LCQMC`,
  `BQ`, `Banking77Classification`). The task class is the one the installed `mteb` defines,
  taken from `mteb.get_task(name)` and subclassed only to replace `load_data` with a reader of
  the local CSV files, so name, split, language subsets, main score and the evaluation protocol
  (e.g. Banking77's 10 logistic-regression experiments on 8 examples per label) are exactly
  MTEB's and the numbers compare with the leaderboard. Where only part of MTEB's data is here
  the task runs on that part: `BQ` on `test` only (C-MTEB also scores `validation`), and
  `STSBenchmarkMultilingualSTS` on the languages that have files (en de es fr pl zh of its ten).
- Tasks derived from the same files, under `Kalmix*` names (never an MTEB task's name):
  STS on the ATEC+CCKS re-split (not MTEB's `ATEC` data), SNIPS intent classification,
  clustering of the Banking77 and SNIPS test texts by label, and retrieval and reranking built
  from STS-B test pairs in six languages (see `stsb_search_split`).

The data folder is `KALMIX_EVAL_DATA` if set, else `[eval] data_dir` in `kalmix.toml`, else
`shared/data` beside the repository or beside the workspace (the layout of `../shared/data`,
described in its README). A task whose files are missing is reported and skipped by the suite;
asking for it by name is an error that lists the missing files.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corpus.errors import KalmixError

EVAL_DATA_ENV = "KALMIX_EVAL_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = 42

# STS-B pairs scored at least this (0-5 scale) count as relevant in the derived search tasks.
RELEVANT_SCORE = 4.0
# Candidates per query in the derived reranking task: its relevant sentences, then the most
# lexically similar other sentences (character n-gram TF-IDF), so that lexical overlap alone
# does not solve it.
RERANK_CANDIDATES = 20

STSB_LANGS = {
    "en": ["eng-Latn"],
    "de": ["deu-Latn"],
    "es": ["spa-Latn"],
    "fr": ["fra-Latn"],
    "pl": ["pol-Latn"],
    "zh": ["cmn-Hans"],
}

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


# ---------------------------------------------------------------------------- reading files


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV with a header (quoted fields may hold line breaks: banking77)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise KalmixError(f"cannot read evaluation file {path}: {err}") from None


def _columns(rows: list[dict[str, str]], path: Path, *names: str) -> None:
    if rows and not set(names) <= set(rows[0]):
        raise KalmixError(
            f"{path} lacks column(s) {', '.join(sorted(set(names) - set(rows[0])))}; "
            f"it has {', '.join(rows[0])}"
        )


def _sample(rows: list[dict[str, str]], limit: int | None) -> list[dict[str, str]]:
    """A seeded random sample of `limit` rows (files are often sorted by label)."""
    if limit is None or len(rows) <= limit:
        return rows
    keep = sorted(random.Random(SEED).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def _pairs(path: Path, score_column: str, limit: int | None):
    from datasets import Dataset

    rows = read_csv(path)
    _columns(rows, path, "sentence1", "sentence2", score_column)
    rows = _sample(rows, limit)
    return Dataset.from_dict(
        {
            "sentence1": [r["sentence1"] for r in rows],
            "sentence2": [r["sentence2"] for r in rows],
            "score": [float(r[score_column]) for r in rows],
        }
    )


def _labelled(path: Path, label_column: str, limit: int | None) -> tuple[list[str], list[str]]:
    rows = read_csv(path)
    _columns(rows, path, "text", label_column)
    rows = _sample(rows, limit)
    return [r["text"] for r in rows], [r[label_column] for r in rows]


# ---------------------------------------------------------------------------- task classes


class _FromFiles:
    """Mixin for an mteb task class: `load_data` calls `reader()` instead of loading a hub
    dataset. The reader returns the dataset already in the shape the task evaluates, so mteb's
    hub-format `dataset_transform` is not applied."""

    reader: Callable[[], Any]

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if not self.data_loaded:
            self.dataset = self.reader()
            self.data_loaded = True

    # Classification only (mteb calls these two from AbsTaskClassification). mteb indexes a
    # `datasets` Column row by row: numpy converts one for sklearn's metrics, and undersampling
    # reads one label per call, which cost about a minute per Banking77 evaluation on 2 cores.
    # The same labels as a list give the same scores (tests/trainer/test_evaluation.py).

    def _calculate_scores(self, y_test: Any, y_pred: Any) -> Any:
        return super()._calculate_scores(_as_list(y_test), y_pred)

    def _undersample_data(
        self, dataset: Any, experiment_num: int, idxs: list[int] | None = None
    ) -> tuple[Any, list[int], list[int]]:
        """mteb's `_undersample_data` (same seed, same shuffle, same picks), labels read once."""
        import numpy as np

        if idxs is None:
            idxs = list(range(len(dataset)))
        np.random.RandomState(self.seed).shuffle(idxs)
        labels = _as_list(dataset[self.label_column_name])
        counts: dict[Any, int] = {}
        sampled = []
        for i in idxs:
            if counts.get(labels[i], 0) < self.samples_per_label:
                sampled.append(i)
                counts[labels[i]] = counts.get(labels[i], 0) + 1
        return dataset.select(sampled), idxs, sampled


def _as_list(column: Any) -> Any:
    """A `datasets` Column as a plain list, read in one slice; anything else unchanged."""
    from datasets.arrow_dataset import Column

    return column[:] if isinstance(column, Column) else column


@functools.cache
def _mteb_class(name: str) -> type:
    """MTEB's own class for `name`, with `load_data` from files."""
    import mteb

    base = type(mteb.get_task(name))
    return type(f"{base.__name__}FromFiles", (_FromFiles, base), {})


def _mteb_task(name: str, reader: Callable[[], Any], splits: list[str] | None = None) -> Any:
    task = _mteb_class(name)()
    task.reader = reader
    if splits is not None:
        task.filter_eval_splits(splits)
    return task


def _kalmix_task(cls: type, reader: Callable[[], Any], subsets: Sequence[str]) -> Any:
    task = cls()
    task.reader = reader
    if task.metadata.is_multilingual:
        task.hf_subsets = list(subsets)
    return task


def _metadata(**fields: Any):
    """TaskMetadata of a kalmix task (dataset path names the local folder, not a hub repo)."""
    from mteb.abstasks.task_metadata import TaskMetadata

    base = {
        "reference": "https://github.com/kalmix",
        "category": "t2t",
        "modalities": ["text"],
        "eval_splits": ["test"],
        "license": "not specified",
        "annotations_creators": "derived",
        "dialect": [],
        "sample_creation": "found",
        "domains": ["Written"],
        "task_subtypes": [],
        "bibtex_citation": "",
    }
    return TaskMetadata(**{**base, **fields})


@functools.cache
def kalmix_classes() -> dict[str, type]:
    """The kalmix-named task classes (built on first use: importing mteb takes seconds)."""
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.clustering import AbsTaskClustering
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS

    class KalmixATECCCKS(_FromFiles, AbsTaskSTS):
        min_score = 0
        max_score = 1
        metadata = _metadata(
            name="KalmixATECCCKS",
            description="ATEC + CCKS 2018 (WeBank) question pairs, the source repo's own "
            "stratified test re-split, scored as STS (Spearman against the 0/1 label) like "
            "C-MTEB scores ATEC; not the same data as MTEB's ATEC.",
            dataset={"path": "kalmix-local/pairs_zh/ATEC_CCKS", "revision": "local"},
            type="STS",
            eval_langs=["cmn-Hans"],
            main_score="cosine_spearman",
            domains=["Financial"],
        )

    class KalmixSNIPSClassification(_FromFiles, AbsTaskClassification):
        metadata = _metadata(
            name="KalmixSNIPSClassification",
            description="SNIPS custom-intent benchmark (7 voice-assistant intents), scored "
            "with MTEB's classification protocol (logistic regression on 8 embedded training "
            "examples per label, 10 experiments).",
            dataset={"path": "kalmix-local/snips", "revision": "local"},
            type="Classification",
            category="t2c",
            eval_langs=["eng-Latn"],
            main_score="accuracy",
            domains=["Spoken"],
        )

    class _LabelClustering(_FromFiles, AbsTaskClustering):
        max_fraction_of_documents_to_embed = None  # embed every text; sample per experiment
        max_documents_per_cluster = 2048

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            super().load_data(num_proc, **kwargs)
            # each experiment draws this many texts with replacement: at most the set's size
            n = len(self.dataset["test"])
            self.max_documents_per_cluster = min(type(self).max_documents_per_cluster, n)

    class KalmixBanking77Clustering(_LabelClustering):
        metadata = _metadata(
            name="KalmixBanking77Clustering",
            description="Banking77 test queries clustered by their 77 intents (V-measure of "
            "mini-batch k-means, 10 bootstrap samples), MTEB's clustering protocol.",
            dataset={"path": "kalmix-local/banking77", "revision": "local"},
            type="Clustering",
            eval_langs=["eng-Latn"],
            main_score="v_measure",
            domains=["Financial"],
        )

    class KalmixSNIPSClustering(_LabelClustering):
        metadata = _metadata(
            name="KalmixSNIPSClustering",
            description="SNIPS test utterances clustered by their 7 intents (V-measure).",
            dataset={"path": "kalmix-local/snips", "revision": "local"},
            type="Clustering",
            eval_langs=["eng-Latn"],
            main_score="v_measure",
            domains=["Spoken"],
        )

    class KalmixSTSBRetrieval(_FromFiles, AbsTaskRetrieval):
        ignore_identical_ids = True  # a query's own sentence is in the corpus
        metadata = _metadata(
            name="KalmixSTSBRetrieval",
            description="STS-B test, per language: each first sentence of a pair scored "
            f">= {RELEVANT_SCORE:g} is a query, its second sentence the relevant document, "
            "every other sentence of the split a distractor.",
            dataset={"path": "kalmix-local/stsb", "revision": "local"},
            type="Retrieval",
            eval_langs=STSB_LANGS,
            main_score="ndcg_at_10",
        )

    class KalmixSTSBReranking(_FromFiles, AbsTaskRetrieval):
        ignore_identical_ids = True
        metadata = _metadata(
            name="KalmixSTSBReranking",
            description=f"STS-B test, per language: rerank {RERANK_CANDIDATES} candidates per "
            "query (its relevant sentences and the most lexically similar other sentences).",
            dataset={"path": "kalmix-local/stsb", "revision": "local"},
            type="Reranking",
            eval_langs=STSB_LANGS,
            main_score="map_at_1000",
        )

    classes = [
        KalmixATECCCKS,
        KalmixSNIPSClassification,
        KalmixBanking77Clustering,
        KalmixSNIPSClustering,
        KalmixSTSBRetrieval,
        KalmixSTSBReranking,
    ]
    return {cls.metadata.name: cls for cls in classes}


# ---------------------------------------------------------------------------- readers


def _text_id(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def stsb_search_split(path: Path, limit: int | None, rerank: bool) -> dict[str, Any]:
    """Retrieval (or reranking) data from one STS-B file.

    Queries: distinct first sentences with a pair scored >= RELEVANT_SCORE (identical pairs
    dropped); relevant: the second sentences of those pairs; corpus: every distinct sentence of
    the (sampled) pairs. Ids are text hashes, so a query's own sentence shares its id and is
    ignored (`ignore_identical_ids`). Reranking adds `top_ranked`: the relevant sentences plus
    the most similar others by character n-gram TF-IDF, RERANK_CANDIDATES in all.
    """
    from datasets import Dataset

    rows = read_csv(path)
    _columns(rows, path, "sentence1", "sentence2", "score")
    rows = _sample(rows, limit)
    texts = list(dict.fromkeys(t.strip() for r in rows for t in (r["sentence1"], r["sentence2"])))
    relevant: dict[str, dict[str, int]] = {}
    query_text: dict[str, str] = {}
    for r in rows:
        s1, s2 = r["sentence1"].strip(), r["sentence2"].strip()
        if float(r["score"]) >= RELEVANT_SCORE and s1 != s2:
            relevant.setdefault(_text_id(s1), {})[_text_id(s2)] = 1
            query_text[_text_id(s1)] = s1
    qids = list(relevant)
    top_ranked = None
    if rerank:
        from sklearn.feature_extraction.text import TfidfVectorizer

        ids = [_text_id(t) for t in texts]
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)).fit(texts)
        sims = (
            vectorizer.transform([query_text[q] for q in qids]) @ vectorizer.transform(texts).T
        ).toarray()
        top_ranked = {}
        for row, qid in enumerate(qids):
            candidates = list(relevant[qid])
            for col in sims[row].argsort()[::-1]:
                if len(candidates) >= RERANK_CANDIDATES:
                    break
                if ids[col] != qid and ids[col] not in relevant[qid]:
                    candidates.append(ids[col])
            top_ranked[qid] = candidates
    return {
        "corpus": Dataset.from_dict({"id": [_text_id(t) for t in texts], "text": texts}),
        "queries": Dataset.from_dict({"id": qids, "text": [query_text[q] for q in qids]}),
        "relevant_docs": relevant,
        "top_ranked": top_ranked,
    }


def _build_stsb(data_dir: Path, o: LoadOptions) -> Any:
    from datasets import DatasetDict

    def read() -> dict:
        return {
            lang: DatasetDict(
                {
                    split: _pairs(data_dir / f"stsb/{lang}-{split}.csv", "score", o.limit)
                    for split in ("dev", "test")
                }
            )
            for lang in o.subsets
        }

    task = _mteb_task("STSBenchmarkMultilingualSTS", read)
    task.hf_subsets = list(o.subsets)
    return task


def _build_classification(
    data_dir: Path, o: LoadOptions, folder: str, label: str, make: Callable[..., Any]
) -> Any:
    from datasets import Dataset, DatasetDict

    def split(name: str, limit: int | None) -> Dataset:
        texts, labels = _labelled(data_dir / f"{folder}/{name}.csv", label, limit)
        return Dataset.from_dict({"text": texts, "label": labels})

    # the training split is never sampled: the protocol draws its few examples per label
    return make(
        lambda: DatasetDict({"train": split("train", None), "test": split("test", o.limit)})
    )


def _build_clustering(data_dir: Path, o: LoadOptions, folder: str, label: str, name: str) -> Any:
    from datasets import Dataset, DatasetDict

    def read() -> DatasetDict:
        texts, labels = _labelled(data_dir / f"{folder}/test.csv", label, o.limit)
        return DatasetDict({"test": Dataset.from_dict({"sentences": texts, "labels": labels})})

    return _kalmix_task(kalmix_classes()[name], read, o.subsets)


def _build_search(data_dir: Path, o: LoadOptions, rerank: bool) -> Any:
    name = "KalmixSTSBReranking" if rerank else "KalmixSTSBRetrieval"

    def read() -> dict:
        return {
            lang: {"test": stsb_search_split(data_dir / f"stsb/{lang}-test.csv", o.limit, rerank)}
            for lang in o.subsets
        }

    return _kalmix_task(kalmix_classes()[name], read, o.subsets)


def _sts_pairs(name: str, rel: str, score: str, splits: list[str] | None = None):
    def build(data_dir: Path, o: LoadOptions) -> Any:
        from datasets import DatasetDict

        def read() -> DatasetDict:
            return DatasetDict({"test": _pairs(data_dir / rel, score, o.limit)})

        if name in kalmix_classes():
            return _kalmix_task(kalmix_classes()[name], read, o.subsets)
        return _mteb_task(name, read, splits)

    return build


LOCAL_TASKS: tuple[LocalTask, ...] = (
    LocalTask(
        "STSBenchmark",
        "sts",
        "STS Benchmark test (English), MTEB's task",
        ("stsb/en-test.csv",),
        _sts_pairs("STSBenchmark", "stsb/en-test.csv", "score"),
        mteb_defined=True,
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
    LocalTask(
        "LCQMC",
        "sts",
        "LCQMC test (Chinese question pairs, 0/1 scored as STS), C-MTEB's task",
        ("pairs_zh/LCQMC-test.csv",),
        _sts_pairs("LCQMC", "pairs_zh/LCQMC-test.csv", "label"),
        mteb_defined=True,
    ),
    LocalTask(
        "BQ",
        "sts",
        "BQ Corpus test (bank questions, 0/1 scored as STS), C-MTEB's task (test split only)",
        ("pairs_zh/BQ_corpus-test.csv",),
        _sts_pairs("BQ", "pairs_zh/BQ_corpus-test.csv", "label", ["test"]),
        mteb_defined=True,
    ),
    LocalTask(
        "KalmixATECCCKS",
        "sts",
        "ATEC+CCKS re-split test (0/1 scored as STS); not MTEB's ATEC data",
        ("pairs_zh/ATEC_CCKS-test.csv",),
        _sts_pairs("KalmixATECCCKS", "pairs_zh/ATEC_CCKS-test.csv", "label"),
    ),
    LocalTask(
        "Banking77Classification",
        "classification",
        "Banking77 intents, MTEB's task and protocol",
        ("banking77/train.csv", "banking77/test.csv"),
        lambda d, o: _build_classification(
            d, o, "banking77", "category", lambda r: _mteb_task("Banking77Classification", r)
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
            lambda r: _kalmix_task(kalmix_classes()["KalmixSNIPSClassification"], r, ()),
        ),
    ),
    LocalTask(
        "KalmixBanking77Clustering",
        "clustering",
        "Banking77 test texts clustered by intent",
        ("banking77/test.csv",),
        lambda d, o: _build_clustering(d, o, "banking77", "category", "KalmixBanking77Clustering"),
    ),
    LocalTask(
        "KalmixSNIPSClustering",
        "clustering",
        "SNIPS test texts clustered by intent",
        ("snips/test.csv",),
        lambda d, o: _build_clustering(d, o, "snips", "label", "KalmixSNIPSClustering"),
    ),
    LocalTask(
        "KalmixSTSBRetrieval",
        "retrieval",
        "STS-B test pairs scored >= 4 as query -> relevant, other sentences as corpus",
        ("stsb/{lang}-test.csv",),
        lambda d, o: _build_search(d, o, rerank=False),
        subsets=tuple(STSB_LANGS),
    ),
    LocalTask(
        "KalmixSTSBReranking",
        "reranking",
        "STS-B test: rerank each query's relevant + lexically closest sentences",
        ("stsb/{lang}-test.csv",),
        lambda d, o: _build_search(d, o, rerank=True),
        subsets=tuple(STSB_LANGS),
    ),
)
LOCAL_BY_NAME = {t.name: t for t in LOCAL_TASKS}
