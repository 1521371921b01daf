"""The semantic quality gate: synthesised examples that parse and pass their schema, judged by
an embedding model.

Every text of a task type's records is embedded once (`encode`: the shared `filters.embedder`
`Embedder.encode` in `kalmix/synthesis.py`, which keeps synth/ free of filters/; vectors are
L2-normalised, so a dot product is a cosine), and a record is removed with the first reason
that applies:

- `copied_example`: one of its texts (not labels) is at cosine >= `copy_similarity` to a text of
  its template's one-shot example, or its query is that close to an earlier record's query
  (detail `dup_of`, as for duplicates). Exact copies are already caught by validation; this
  catches the near-copies (a word changed).
- `task_mismatch`: its query is closer to the template's one-shot task description than to its
  own task description (the record's `instruction`) by more than `task_margin`: the model
  wrote an example for the one-shot task, not for the persona's.
- `positive_not_first`: its positive does not outrank every one of its negatives for its query
  (cosine to the query; no threshold). Task types without positive and negatives skip it.

The defaults were chosen on real data with all-MiniLM-L6-v2, the default embedder
(`benchmarks/synth.py` measures them again, section "gate calibration"):

- `copy_similarity` 0.95: of STS-B en-dev's 1,500 human-scored pairs, those at cosine >= 0.95
  are near-identical (75% scored >= 4.5 of 5, 87% >= 4); at 0.90 only 53% are >= 4.5.
- `task_margin` 0.05: 600 banking77 and 600 SNIPS test queries, each against a hand-written
  task description of its own dataset and one of the other: absolute cosines to a description
  are low and overlap (matched median 0.11), but "closer to the other task by more than 0.05"
  rejects 7% of matched queries and 72% of mismatched ones (margin 0: 16% and 84%).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from corpus.operator import Operator, OpResult, split_by_mask
from synth.prompts import TaskTemplate

COPY_SIMILARITY = 0.95
TASK_MARGIN = 0.05
GATE_REASONS = ("copied_example", "task_mismatch", "positive_not_first")

Encode = Callable[[Sequence[str]], np.ndarray]


class QualityGate(Operator):
    """Records of one task type in, the ones that pass out; the others as removals with a
    reason and the similarities that decided it."""

    def __init__(
        self,
        encode: Encode,
        template: TaskTemplate,
        copy_similarity: float = COPY_SIMILARITY,
        task_margin: float = TASK_MARGIN,
        model: str = "",
    ):
        self.encode = encode
        self.template = template
        self.copy_similarity = copy_similarity
        self.task_margin = task_margin
        self.model = model

    def params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "copy_similarity": self.copy_similarity,
            "task_margin": self.task_margin,
        }

    def __call__(self, table: pa.Table) -> OpResult:
        rows = table.to_pylist()
        shot = json.loads(self.template.example["shot_output"])
        shot_texts = [
            shot[f.key]
            for f in self.template.fields
            if f.record not in ("label", "meta") and isinstance(shot.get(f.key), str)
        ]
        shot_task = self.template.example["shot_task"]
        texts = [shot_task, *shot_texts]
        for row in rows:
            texts += [row["query"] or "", row["instruction"] or "", row["positive"] or ""]
            texts += list(row["negatives"] or [])
        unique = list(dict.fromkeys(texts))
        vectors = self.encode(unique) if unique else np.zeros((0, 1), np.float32)
        vec = {text: vectors[i] for i, text in enumerate(unique)}
        shot_matrix = np.stack([vec[t] for t in shot_texts]) if shot_texts else None

        keep, reasons, details = [], [], []
        earlier: list[tuple[str, np.ndarray]] = []  # (id, query vector) of records kept so far
        for row in rows:
            reason, detail = self._judge(row, vec, shot_matrix, vec[shot_task], earlier)
            keep.append(reason is None)
            reasons.append(reason)
            details.append(detail)
            if reason is None:
                earlier.append((row["id"], vec[row["query"] or ""]))
        kept, removed = split_by_mask(table, keep, reasons, details)
        counts = Counter(r for r in reasons if r)
        stats = {
            "checked": len(rows),
            "passed": int(sum(keep)),
            "rejected_by_reason": dict(counts.most_common()),
            **self.params(),
        }
        return OpResult(kept, removed, stats)

    def _judge(
        self,
        row: dict,
        vec: dict[str, np.ndarray],
        shot_matrix: np.ndarray | None,
        shot_task: np.ndarray,
        earlier: list[tuple[str, np.ndarray]],
    ) -> tuple[str | None, dict | None]:
        query = vec[row["query"] or ""]
        own = [row["query"], row["positive"], *(row["negatives"] or [])]
        own = [t for t in own if t]
        if shot_matrix is not None and own:
            sims = np.stack([vec[t] for t in own]) @ shot_matrix.T
            if sims.max() >= self.copy_similarity:
                return "copied_example", {"of": "one-shot example", "similarity": _r(sims.max())}
        if earlier:
            sims = np.stack([v for _, v in earlier]) @ query
            best = int(sims.argmax())
            if sims[best] >= self.copy_similarity:
                return "copied_example", {"dup_of": earlier[best][0], "similarity": _r(sims[best])}
        if row["instruction"]:
            to_own = float(query @ vec[row["instruction"]])
            to_shot = float(query @ shot_task)
            if to_shot - to_own > self.task_margin:
                return "task_mismatch", {"own_task": _r(to_own), "shot_task": _r(to_shot)}
        negatives = [t for t in row["negatives"] or [] if t]
        if row["positive"] and negatives:
            positive = float(query @ vec[row["positive"]])
            negative = float(max(query @ vec[t] for t in negatives))
            if positive <= negative:
                return "positive_not_first", {"positive": _r(positive), "negative": _r(negative)}
        return None, None


def _r(x: float) -> float:
    return round(float(x), 4)
