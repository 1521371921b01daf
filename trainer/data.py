"""Training batches from a mixture version: semi-homogeneous, duplicate-free, instructed queries.

The core works on any iterable of `(dataset name, record table)` (the record schema of
`corpus/schema.py`); `load_mixture` adapts a mixture version through
`catalog.mixtures.iter_dataset_tables`, which already fills each row's `instruction` with the
category's default (or the spec's override) when the record has none.

What becomes a training example (`Example`):
- retrieval, reranking, bitext: (query, positive, record negatives);
- sts: pairs with `score >= sts_min_score` (lower scores are not paraphrases); pair
  classification: pairs with a positive score or none;
- classification, clustering (query + label): example-based labelling as in KaLM: the positive
  is another example of the same label in the dataset, the hard negatives are examples of other
  labels, and every text carries its label group so that the loss never uses an example of the
  query's own label as a negative. Labels with a single example cannot give a positive.
The instruction goes on the query side only, written with `instruction_template`, when
`query_instructions` is on (the transformer default; off for static models, see config.py).

Batches (`BatchSampler`), following KaLM's semi-homogeneous batching: each batch draws
`homogeneous_share` of its queries from one dataset (picked with probability proportional to
its rows left in the epoch) and the rest from all datasets in proportion. No text appears twice
in a batch (a duplicate query, or a candidate text shared by two examples, is a false in-batch
negative): a row that would repeat a text is deferred to the next batch. An epoch is one pass
over each dataset's rows in a seeded order; the last incomplete batch is dropped so every
process always gets the same number of queries. All processes build the same global batch and
take their own slice, so there is no communication for data.

The sampler's state (epoch, batch number, per-dataset cursors, deferred rows) is a small JSON
dict: with the seed it reproduces the following batches exactly, which is what `--resume` needs.
Per-batch random choices (the main dataset, classification positives, which hard negatives)
come from a generator seeded by (seed, epoch, batch), so they need no saved state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.db import Catalog
from catalog.mixtures import ManifestEntry, MixtureVersion, iter_dataset_tables, resolve_mixture
from corpus.errors import KalmixError
from trainer.config import TrainConfig

COLUMNS = ["task_type", "instruction", "query", "positive", "negatives", "score", "label", "meta"]
LABELLED = ("classification", "clustering")


@dataclass(frozen=True)
class Example:
    query: str  # with the instruction prefix
    positive: str
    negatives: tuple[str, ...]
    group: int  # label group of the query and its positive; -1 without a label
    negative_groups: tuple[int, ...]
    dataset: int
    teacher: tuple[float, ...] | None = None  # teacher scores of positive + negatives


@dataclass
class DataReport:
    rows_in: int = 0
    rows_used: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    datasets: int = 0
    seconds: float = 0.0

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def line(self, name: str) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"train data: {name}: {self.datasets} datasets, rows {self.rows_in} -> "
            f"{self.rows_used} usable; dropped: {reasons}; {self.seconds:.1f}s"
        )


def _text(array: pa.Array) -> pa.Array:
    """Strings with nulls for empty or whitespace-only values."""
    stripped = pc.utf8_trim_whitespace(array)
    return pc.if_else(pc.equal(stripped, ""), pa.nulls(len(array), pa.string()), array)


class Source:
    """The usable rows of one dataset, kept as Arrow arrays (texts are read per batch)."""

    def __init__(
        self, name: str, table: pa.Table, index: int, group_offset: int, cfg: TrainConfig
    ) -> None:
        self.name = name
        self.index = index
        self.template = cfg.instruction_template if cfg.query_instructions else None
        self.task_type = table.column("task_type")[0].as_py() if table.num_rows else "retrieval"
        self.rows_in = table.num_rows
        col = {c: table.column(c).combine_chunks() for c in COLUMNS if c in table.column_names}
        for needed in ("query", "task_type"):
            if needed not in col:
                raise KalmixError(f"dataset {name} has no {needed!r} column")
        n = table.num_rows
        none = pa.nulls(n, pa.string())
        self.query = _text(col["query"])
        self.positive = _text(col.get("positive", none))
        self.instruction = _text(col.get("instruction", none))
        self.negatives = col.get("negatives", pa.nulls(n, pa.list_(pa.string())))
        self.meta = col.get("meta", none) if cfg.distill_weight > 0 else None
        self.dropped: dict[str, int] = {}
        keep = pc.is_valid(self.query).to_numpy(zero_copy_only=False)
        self._drop("no query", keep)
        self.labelled = self.task_type in LABELLED
        self.group_count = 0
        if self.labelled and not cfg.labelled_examples:
            self._drop("labelled data off (labelled_examples = false)", np.zeros(n, bool), keep)
            keep = np.zeros(n, dtype=bool)
        elif self.labelled:
            labels = _text(col.get("label", none))
            has = keep & pc.is_valid(labels).to_numpy(zero_copy_only=False)
            self._drop("no label", has, keep)
            codes = np.full(n, -1, dtype=np.int64)
            encoded = pc.dictionary_encode(labels.filter(pa.array(has)))
            codes[has] = encoded.indices.to_numpy(zero_copy_only=False)
            counts = np.bincount(codes[has], minlength=len(encoded.dictionary))
            usable = has & (counts[np.maximum(codes, 0)] >= 2)
            self._drop("only example of its label", usable, has)
            keep = usable
            self.codes = codes
            self.group_offset = group_offset
            self.group_count = len(encoded.dictionary)
            order = np.flatnonzero(keep)
            order = order[np.argsort(codes[order], kind="stable")]
            bounds = np.searchsorted(codes[order], np.arange(self.group_count + 1))
            self.by_label = [order[bounds[g] : bounds[g + 1]] for g in range(self.group_count)]
        else:
            has = keep & pc.is_valid(self.positive).to_numpy(zero_copy_only=False)
            self._drop("no positive", has, keep)
            keep = has
            if self.task_type in ("sts", "pair_classification") and "score" in col:
                score = col["score"].to_numpy(zero_copy_only=False)
                score = np.where(np.isnan(score), np.inf, score)  # no score: a positive pair
                good = score >= cfg.sts_min_score if self.task_type == "sts" else score > 0
                self._drop(f"{self.task_type} score too low", keep & good, keep)
                keep = keep & good
        self.rows = np.flatnonzero(keep)

    def _drop(self, reason: str, kept: np.ndarray, before: np.ndarray | None = None) -> None:
        n = int((before if before is not None else np.ones_like(kept)).sum() - kept.sum())
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def _prompt(self, row: int) -> str:
        query = self.query[row].as_py()
        if self.template is None:
            return query
        instruction = self.instruction[row].as_py()
        return self.template.format(instruction=instruction) + query if instruction else query

    def raw_query(self, row: int) -> str:
        return self.query[row].as_py()

    def example(self, row: int, rng: np.random.Generator, k: int) -> Example:
        """The training example of `row`; random choices come from this batch's generator."""
        if self.labelled:
            code = int(self.codes[row])
            same = self.by_label[code]
            pick = same[rng.integers(len(same) - 1)]
            if pick == row:  # row occurs once in `same`, so the last element differs from it
                pick = same[-1]
            negatives, groups = [], []
            if k and self.group_count > 1:
                for other in rng.choice(self.rows, size=min(4 * k, len(self.rows))):
                    other_code = int(self.codes[other])
                    text = self.query[other].as_py()
                    if other_code != code and text not in negatives:
                        negatives.append(text)
                        groups.append(self.group_offset + other_code)
                        if len(negatives) == k:
                            break
            group = self.group_offset + code
            return Example(
                self._prompt(row),
                self.query[pick].as_py(),
                tuple(negatives),
                group,
                tuple(groups),
                self.index,
            )
        positive = self.positive[row].as_py()
        raw = self.negatives[row].as_py() or []
        first = {}  # each distinct usable negative text -> its first position in `raw`
        for i, t in enumerate(raw):
            if t and t != positive and t not in first:
                first[t] = i
        pool = list(first)
        if len(pool) > k:
            pool = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
        teacher = self._teacher(row, len(raw))
        if teacher is not None:
            teacher = (teacher[0], *(teacher[1 + first[t]] for t in pool))
        return Example(
            self._prompt(row), positive, tuple(pool), -1, (-1,) * len(pool), self.index, teacher
        )

    def _teacher(self, row: int, negatives: int) -> list[float] | None:
        """The row's stored teacher scores when they match its [positive] + negatives."""
        if self.meta is None:
            return None
        text = self.meta[row].as_py()
        if not text or "teacher_scores" not in text:
            return None
        try:
            scores = json.loads(text).get("teacher_scores")
        except (json.JSONDecodeError, AttributeError):
            return None
        if not isinstance(scores, list) or len(scores) != 1 + negatives:
            return None  # negatives changed since the teacher scored them
        return [float(x) for x in scores]


def build_sources(
    tables: Iterable[tuple[str, pa.Table]], cfg: TrainConfig
) -> tuple[list[Source], DataReport]:
    """Group `(dataset, table)` pieces by dataset and prepare each; report what was dropped."""
    start = time.perf_counter()
    pieces: dict[str, list[pa.Table]] = {}
    for name, table in tables:
        pieces.setdefault(name, []).append(table)
    sources, report, offset = [], DataReport(), 0
    for name, parts in pieces.items():
        table = pa.concat_tables(parts, promote_options="permissive")
        source = Source(name, table, len(sources), offset, cfg)
        offset += source.group_count
        report.rows_in += source.rows_in
        report.rows_used += len(source.rows)
        for reason, n in source.dropped.items():
            report.drop(reason, n)
        if len(source.rows):
            sources.append(source)
    report.datasets = len(sources)
    report.seconds = time.perf_counter() - start
    return sources, report


def load_mixture(
    cat: Catalog, ref: str, cfg: TrainConfig
) -> tuple[MixtureVersion, list[Source], DataReport]:
    """The sources of a mixture version (all its sampled rows, read once)."""
    mv = resolve_mixture(cat, ref)
    sources, report = build_sources(iter_dataset_tables(cat, mv, columns=COLUMNS), cfg)
    return mv, sources, report


class BatchSampler:
    """Global batches of `batch_size` examples; see the module docstring for the rules."""

    def __init__(
        self,
        sources: list[Source],
        *,
        batch_size: int,
        homogeneous_share: float,
        negatives_per_query: int,
        seed: int,
    ) -> None:
        self.sources = sources
        self.batch_size = batch_size
        self.share = homogeneous_share
        self.k = negatives_per_query
        self.seed = seed
        usable = sum(len(s.rows) for s in sources)
        if usable < batch_size:
            raise KalmixError(
                f"batch size {batch_size} is larger than the {usable} usable training rows; "
                f"lower --batch-size to at most {usable} or use a bigger mixture"
            )
        self._start_epoch(0)

    @property
    def steps_per_epoch(self) -> int:
        return sum(len(s.rows) for s in self.sources) // self.batch_size

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.batch_in_epoch = epoch, 0
        self.cursor = [0] * len(self.sources)
        self.deferred: list[list[int]] = [[] for _ in self.sources]
        self._perms = [
            s.rows[np.random.default_rng([self.seed, epoch, s.index]).permutation(len(s.rows))]
            for s in self.sources
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "cursor": list(self.cursor),
            "deferred": [list(map(int, d)) for d in self.deferred],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start_epoch(state["epoch"])
        self.batch_in_epoch = state["batch_in_epoch"]
        self.cursor = list(state["cursor"])
        self.deferred = [list(d) for d in state["deferred"]]

    def _remaining(self) -> np.ndarray:
        return np.array(
            [len(self.deferred[d]) + len(p) - self.cursor[d] for d, p in enumerate(self._perms)],
            dtype=np.float64,
        )

    def next_batch(self) -> list[Example]:
        batch = self._assemble()
        if batch is None:
            self._start_epoch(self.epoch + 1)
            batch = self._assemble()
            if batch is None:
                raise KalmixError(
                    f"cannot fill one batch of {self.batch_size} examples without repeating a "
                    "text: the mixture has too many duplicate texts; lower --batch-size"
                )
        self.batch_in_epoch += 1
        return batch

    def _assemble(self) -> list[Example] | None:
        rng = np.random.default_rng([self.seed, self.epoch, self.batch_in_epoch])
        remaining = self._remaining()
        if remaining.sum() < self.batch_size:
            return None
        picked = _Picked()
        later: list[list[int]] = [[] for _ in self.sources]
        n_main = round(self.share * self.batch_size)
        if n_main:
            main = int(rng.choice(len(self.sources), p=remaining / remaining.sum()))
            self._take(main, n_main, picked, rng, later)
        while len(picked.examples) < self.batch_size:
            remaining = self._remaining()
            if not remaining.sum():
                return None
            need = self.batch_size - len(picked.examples)
            for d, count in enumerate(rng.multinomial(need, remaining / remaining.sum())):
                if count:
                    self._take(d, int(count), picked, rng, later)
        for d, rows in enumerate(later):
            self.deferred[d].extend(rows)
        order = rng.permutation(self.batch_size)
        return [picked.examples[i] for i in order]

    def _take(self, d: int, n: int, picked: _Picked, rng: np.random.Generator, later) -> None:
        """Up to `n` examples from dataset `d`'s queue; rows that repeat a text wait."""
        source, taken = self.sources[d], 0
        while taken < n and len(picked.examples) < self.batch_size:
            if self.deferred[d]:
                row = self.deferred[d].pop(0)
            elif self.cursor[d] < len(self._perms[d]):
                row = int(self._perms[d][self.cursor[d]])
                self.cursor[d] += 1
            else:
                return
            example = source.example(row, rng, self.k)
            raw = example.query if source.template is None else source.raw_query(row)
            if picked.add(raw, example):
                taken += 1
            else:
                later[d].append(row)


class _Picked:
    """The examples of a batch being assembled and the texts they use."""

    def __init__(self) -> None:
        self.examples: list[Example] = []
        self.queries: set[str] = set()
        self.texts: set[str] = set()

    def add(self, raw_query: str, example: Example) -> bool:
        """Take the example unless it repeats a query or a candidate text of the batch.

        Candidates of labelled examples are exempt: a text shared between two of them is
        either a same-label candidate (masked by its group) or a repeated negative, never a
        false negative.
        """
        if raw_query in self.queries:
            return False
        if example.group < 0:
            cands = {example.positive, *example.negatives}
            if not cands.isdisjoint(self.texts):
                return False
            self.texts |= cands
        self.queries.add(raw_query)
        self.examples.append(example)
        return True


# mteb's task type names: the exported prompts are keyed so that mteb picks them up.
MTEB_TASK_TYPES = {
    "retrieval": "Retrieval",
    "reranking": "Reranking",
    "sts": "STS",
    "classification": "Classification",
    "clustering": "Clustering",
    "pair_classification": "PairClassification",
    "bitext": "BitextMining",
}
ASYMMETRIC = ("retrieval", "reranking")


def mixture_prompts(entries: list[ManifestEntry], template: str | None) -> dict[str, str]:
    """Named prompts for the exported model, from the instructions the mixture trained with.

    None (a model trained without instructions) gives no prompts at all.

    Per task type, the instruction of its largest category (by rows taken); retrieval-like
    types get `<Type>-query` and an empty `<Type>-document` (documents were never instructed),
    symmetric types one `<Type>` prompt. `query` is the retrieval prompt (else the largest
    task type's) and `document` is empty: mteb resolves task name, then task type, then
    query/document.
    """
    if template is None:
        return {}
    rows: dict[tuple[str, str], int] = {}
    for e in entries:
        if e.instruction and e.rows_taken:
            key = (e.task_type, e.instruction)
            rows[key] = rows.get(key, 0) + e.rows_taken
    best: dict[str, tuple[int, str]] = {}
    for (task_type, instruction), n in sorted(rows.items()):
        if task_type in MTEB_TASK_TYPES and n > best.get(task_type, (0, ""))[0]:
            best[task_type] = (n, instruction)
    prompts = {"document": ""}
    for task_type, (_, instruction) in sorted(best.items()):
        name, text = MTEB_TASK_TYPES[task_type], template.format(instruction=instruction)
        if task_type in ASYMMETRIC:
            prompts[f"{name}-query"] = text
            prompts[f"{name}-document"] = ""
        else:
            prompts[name] = text
    if best:
        main = "retrieval" if "retrieval" in best else max(best, key=lambda t: best[t][0])
        prompts["query"] = template.format(instruction=best[main][1])
    return prompts
