"""The mteb task classes of the local suite, each loading its data from files.

- MTEB's own tasks (`STSBenchmark`, `Banking77Classification`, ...): the class the installed
  `mteb` defines, taken from `mteb.get_task(name)` and subclassed only to replace `load_data`
  with a reader of the local files (`mteb_task`), so name, split, language subsets, main score
  and the evaluation protocol are exactly MTEB's and the numbers compare with the leaderboard.
- The `Kalmix*` tasks (never an MTEB task's name): classes of their own on mteb's abstract task
  types (`kalmix_classes`), with metadata that names the local folder, not a hub repo.

mteb is imported on first use: importing it takes seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from trainer.evaluation.readers import RELEVANT_SCORE, RERANK_CANDIDATES

STSB_LANGS = {
    "en": ["eng-Latn"],
    "de": ["deu-Latn"],
    "es": ["spa-Latn"],
    "fr": ["fra-Latn"],
    "pl": ["pol-Latn"],
    "zh": ["cmn-Hans"],
}


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


def mteb_task(name: str, reader: Callable[[], Any], splits: list[str] | None = None) -> Any:
    """MTEB's task `name` reading its data with `reader` (on `splits` only, if given)."""
    task = _mteb_class(name)()
    task.reader = reader
    if splits is not None:
        task.filter_eval_splits(splits)
    return task


def kalmix_task(cls: type, reader: Callable[[], Any], subsets: Sequence[str]) -> Any:
    """A `Kalmix*` task reading its data with `reader` (on `subsets`, if multilingual)."""
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
