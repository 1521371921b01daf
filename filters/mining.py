"""Hard-negative mining: retrieve with an embedding model, guard against false negatives, sample.

For each (query, positive) pair the candidate pool (every positive and negative of the data, plus
an optional larger corpus) is ranked for the query, leaving out the row's own positive and the
query's own text. From the rank window `start:end` (a zero-based slice of that ranking:
10:100 skips the 10 best candidates, which are the likeliest unlabelled positives), candidates are
dropped when they are

- near-duplicates of the positive (cosine to the positive >= `near_dup`),
- scored too close to the positive: above `positive_score - margin` (absolute guard), and/or
  above `relative * positive_score` (relative guard, NV-Retriever's "TopK-PercPos"),

and `negatives` of the rest are sampled without replacement with a generator seeded by (seed,
row id), so a row gets the same negatives whatever else is in the table. They replace the row's
`negatives` (the previous version keeps the old ones). Rows with fewer survivors than asked keep
what there is; the stats count them.

Languages: by default a query only gets negatives in its own language. A row's `language` is the
language of its query's candidates (for bitext rows it is the target language, that of the
positive), and a pool text carries the language of the record(s) it came from, --pool datasets
included. Where the query's or the text's language is unknown (null, empty, `und`, `mul`,
`zxx`; a text that records of different languages share, such as a name or a number, counts as
unknown), language excludes nothing. Tags compare by their primary subtag (`en-US` is `en`).
The rule is applied inside the top-k search, not after it: the queries of one language are
ranked over that language's texts plus the unknown ones, so the window holds as many candidates
as it would without the rule, and data with one language takes the unchanged single search and
gets exactly the same negatives. The other-language texts are ranked too, only to count the
stat `cross_lingual_skipped`: how many of them would have been in the rank window without the
rule (the total search work is the single search's). `cross_lingual=True` (`--cross-lingual`)
ranks every query over the whole pool, the old behaviour.

`meta` (JSON) gains `mining`: {model, positive_score, scores, ranks} for the mined negatives, and,
with a teacher model, `teacher_scores`: the teacher's cosine of the query with [positive] +
negatives, in that order, and `teacher`: its name. Contrastive distillation reads those scores
(KaLM-Embedding-V2.5: a KL term pulls the student's scores towards the teacher's).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from corpus.errors import KalmixError
from corpus.operator import Operator, OpResult, empty_removals
from filters.consistency import PairEmbeddings, embed_pairs, require_pair_tasks
from filters.embedder import Embedder
from filters.topk import TopK, topk

ROW_BLOCK = 512  # rows whose window vectors are gathered at once for the near-dup test


@dataclass(frozen=True)
class MiningConfig:
    negatives: int = 7
    start: int = 10
    end: int = 100
    margin: float | None = 0.1
    relative: float | None = None
    near_dup: float = 0.95
    seed: int = 0
    instructions: bool = False
    backend: str = "exact"
    cross_lingual: bool = False  # rank every query over the whole pool, whatever its language

    def __post_init__(self) -> None:
        if self.negatives < 1:
            raise KalmixError(f"--negatives must be at least 1, got {self.negatives}")
        if not 0 <= self.start < self.end:
            raise KalmixError(
                f"--range {self.start}:{self.end} must be START:END with 0 <= START < END"
            )
        if self.end - self.start < self.negatives:
            raise KalmixError(
                f"--range {self.start}:{self.end} holds {self.end - self.start} candidates, fewer "
                f"than --negatives {self.negatives}; widen the range"
            )
        if self.margin is not None and self.margin < 0:
            raise KalmixError(f"--margin must be >= 0, got {self.margin}")
        if self.relative is not None and not 0 < self.relative <= 1:
            raise KalmixError(f"--relative must be in (0, 1], got {self.relative}")
        if not 0 < self.near_dup <= 1:
            raise KalmixError(f"--near-dup must be in (0, 1], got {self.near_dup}")


def parse_range(text: str) -> tuple[int, int]:
    """`10:100` -> (10, 100)."""
    try:
        start, end = (int(p) for p in text.split(":"))
    except ValueError:
        raise KalmixError(f"--range {text!r} is not START:END, e.g. 10:100") from None
    return start, end


# ISO 639 codes that name no single language: treated like a missing language
UNKNOWN_LANGUAGES = frozenset({"und", "mul", "zxx"})


def language_key(value: str | None) -> str | None:
    """A language tag's primary subtag, lowercased (`en-US` -> `en`); None when unknown."""
    if not value:
        return None
    key = value.strip().lower().replace("_", "-").split("-")[0]
    return None if not key or key in UNKNOWN_LANGUAGES else key


def pool_candidates(tables: Sequence[pa.Table]) -> tuple[list[str], list[str | None]]:
    """Positives and negatives of --pool tables, each with the language of its record."""
    texts: list[str] = []
    languages: list[str | None] = []
    for table in tables:
        rows = zip(
            table.column("positive").to_pylist(),
            table.column("negatives").to_pylist(),
            table.column("language").to_pylist(),
            strict=True,
        )
        for positive, negs, language in rows:
            for text in [positive, *(negs or ())]:
                if text:
                    texts.append(text)
                    languages.append(language)
    return texts, languages


def _row_seed(row_id: str) -> int:
    try:
        return int(row_id[:16], 16)
    except ValueError:
        return int.from_bytes(row_id.encode()[:8].ljust(8, b"\0"), "little")


@dataclass
class HardNegativeMiner(Operator):
    """Operator: write mined hard negatives into `negatives`, scores into `meta`."""

    embedder: Embedder
    config: MiningConfig = field(default_factory=MiningConfig)
    pool: Sequence[str] = ()
    teacher: Embedder | None = None
    show_progress: bool = False
    pool_languages: Sequence[str | None] = ()  # language of each `pool` text (none: unknown)

    def params(self) -> dict:
        """The settings and the model (the pool's datasets are the caller's to add)."""
        c = self.config
        params = {
            "negatives": c.negatives,
            "range": f"{c.start}:{c.end}",
            "margin": c.margin,
            "relative": c.relative,
            "near_dup": c.near_dup,
            "seed": c.seed,
            "instructions": c.instructions,
            "index": c.backend,
            "cross_lingual": c.cross_lingual,
            **self.embedder.params(),
        }
        if self.teacher is not None:
            params["teacher"] = str(self.teacher.path)
        return params

    def __call__(self, table: pa.Table) -> OpResult:
        cfg = self.config
        require_pair_tasks(table, "hard-negative mining")
        pairs = embed_pairs(table, self.embedder, self.pool, cfg.instructions)
        pos_scores = pairs.positive_scores
        hits, skipped = self._search(pairs, *self._languages(table, pairs))
        win_s = hits.scores[:, cfg.start : cfg.end]
        win_i = hits.indices[:, cfg.start : cfg.end]
        usable = (win_i >= 0) & pairs.valid[:, None]
        near = self._near_duplicates(pairs, win_i) & usable
        guard = np.zeros_like(usable)
        if cfg.margin is not None:
            guard |= win_s > (pos_scores[:, None] - cfg.margin)
        if cfg.relative is not None:
            guard |= win_s > (pos_scores[:, None] * cfg.relative)
        guard &= usable & ~near
        usable &= ~near & ~guard

        ids = table.column("id").to_pylist()
        chosen: list[np.ndarray] = []
        for row in range(table.num_rows):
            cols = np.flatnonzero(usable[row])
            if len(cols) > cfg.negatives:
                rng = np.random.default_rng([cfg.seed, _row_seed(ids[row])])
                cols = np.sort(rng.choice(cols, cfg.negatives, replace=False))
            chosen.append(cols)

        teacher_scores = self._teacher_scores(table, pairs, win_i, chosen)
        negatives, metas = [], []
        for row, (cols, meta) in enumerate(
            zip(chosen, table.column("meta").to_pylist(), strict=True)
        ):
            negatives.append([pairs.pool[i] for i in win_i[row, cols]])
            info = _meta(meta)
            if pairs.valid[row]:
                info["mining"] = {
                    "model": self.embedder.name,
                    "positive_score": round(float(pos_scores[row]), 4),
                    "scores": [round(float(s), 4) for s in win_s[row, cols]],
                    "ranks": [int(cfg.start + c + 1) for c in cols],
                }
                if teacher_scores is not None:
                    info["teacher_scores"] = teacher_scores[row]
                    info["teacher"] = self.teacher.name
            metas.append(json.dumps(info, ensure_ascii=False))
        counts = np.array([len(c) for c in chosen])
        out = table.set_column(
            table.schema.get_field_index("negatives"),
            "negatives",
            pa.array(negatives, pa.list_(pa.string())),
        )
        out = out.set_column(
            out.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string())
        )
        window = int(usable.shape[1]) * int(pairs.valid.sum())
        stats = {
            "model": self.embedder.name,
            "pool": len(pairs.pool),
            "negatives": cfg.negatives,
            "range": f"{cfg.start}:{cfg.end}",
            "margin": cfg.margin,
            "relative": cfg.relative,
            "seed": cfg.seed,
            "mined": int(counts.sum()),
            "rows_short": int(((counts < cfg.negatives) & pairs.valid).sum()),
            "rows_without": int(((counts == 0) & pairs.valid).sum()),
            "rows_skipped": int((~pairs.valid).sum()),
            "dropped_near_duplicate": int(near.sum()),
            "dropped_by_guard": int(guard.sum()),
            "window_candidates": window,
            "cross_lingual": cfg.cross_lingual,
            "cross_lingual_skipped": int(skipped[pairs.valid].sum()),
        }
        if self.teacher is not None:
            stats["teacher"] = self.teacher.name
        return OpResult(out, empty_removals(), stats)

    def _languages(self, table: pa.Table, pairs: PairEmbeddings) -> tuple[np.ndarray, np.ndarray]:
        """Language codes of the rows and of the pool texts (int32, -1 where unknown)."""
        if self.pool_languages and len(self.pool_languages) != len(self.pool):
            raise KalmixError(
                f"pool_languages has {len(self.pool_languages)} entries for {len(self.pool)} "
                "pool texts"
            )
        row_keys = [language_key(v) for v in table.column("language").to_pylist()]
        text_key: dict[str, str] = {}
        shared: set[str] = set()  # texts that records of different languages share

        def note(text: str | None, key: str | None) -> None:
            text = text.strip() if text else ""
            if text and key is not None and text_key.setdefault(text, key) != key:
                shared.add(text)

        for positive, negs, key in zip(
            table.column("positive").to_pylist(),
            table.column("negatives").to_pylist(),
            row_keys,
            strict=True,
        ):
            note(positive, key)
            for text in negs or ():
                note(text, key)
        for text, language in zip(self.pool, self.pool_languages, strict=False):
            note(text, language_key(language))
        codes: dict[str, int] = {}
        rows = np.array([codes.setdefault(k, len(codes)) if k else -1 for k in row_keys], np.int32)
        pool = np.array(
            [
                -1
                if text in shared or text not in text_key
                else codes.setdefault(text_key[text], len(codes))
                for text in pairs.pool
            ],
            np.int32,
        )
        return rows, pool

    def _search(
        self, pairs: PairEmbeddings, row_lang: np.ndarray, pool_lang: np.ndarray
    ) -> tuple[TopK, np.ndarray]:
        """The best `end` candidates per row, of the row's language where languages are known,
        and per row how many other-language texts the rule kept out of the rank window."""
        cfg = self.config
        n = len(row_lang)
        skipped = np.zeros(n, np.int64)
        known = np.unique(pool_lang[pool_lang >= 0])
        groups = [g for g in np.unique(row_lang[row_lang >= 0]) if np.any(known != g)]
        if cfg.cross_lingual or not groups:  # one language (or none known): the single search
            hits = topk(
                pairs.query_vectors,
                pairs.pool_vectors,
                cfg.end,
                exclude=pairs.exclude,
                backend=cfg.backend,
            )
            return hits, skipped
        scores = np.full((n, cfg.end), -np.inf, np.float32)
        indices = np.full((n, cfg.end), -1, np.int64)
        rest = ~np.isin(row_lang, groups)  # unknown languages, or no other language in the pool
        if rest.any():
            rows = np.flatnonzero(rest)
            every = np.arange(len(pool_lang))
            scores[rows], indices[rows] = self._ranked(pairs, rows, every)
        for g in groups:
            rows = np.flatnonzero(row_lang == g)
            same = np.flatnonzero((pool_lang == g) | (pool_lang < 0))
            other = np.flatnonzero((pool_lang >= 0) & (pool_lang != g))
            scores[rows], indices[rows] = self._ranked(pairs, rows, same)
            other_scores, _ = self._ranked(pairs, rows, other)
            # rank both lists together: the other-language ones that land in the window
            merged = np.concatenate([scores[rows], other_scores], axis=1)
            order = np.argsort(-merged, axis=1, kind="stable")[:, : cfg.end]
            in_window = order[:, cfg.start :]
            taken = np.take_along_axis(merged, in_window, axis=1) > -np.inf
            skipped[rows] = ((in_window >= cfg.end) & taken).sum(axis=1)
        return TopK(scores, indices), skipped

    def _ranked(
        self, pairs: PairEmbeddings, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top `end` (scores, pool indices) of the given rows over the pool texts `cols`."""
        k = self.config.end
        if len(cols) == 0:
            return np.full((len(rows), k), -np.inf, np.float32), np.full((len(rows), k), -1)
        where = np.full(len(pairs.pool), -1, np.int64)
        where[cols] = np.arange(len(cols))
        exclude = pairs.exclude[rows]
        exclude = np.where(exclude >= 0, where[np.maximum(exclude, 0)], -1)
        hits = topk(
            pairs.query_vectors[rows],
            pairs.pool_vectors[cols],
            k,
            exclude=exclude,
            backend=self.config.backend,
        )
        return hits.scores, np.where(hits.indices >= 0, cols[np.maximum(hits.indices, 0)], -1)

    def _near_duplicates(self, pairs: PairEmbeddings, win_i: np.ndarray) -> np.ndarray:
        """Window candidates whose cosine to the row's positive reaches `near_dup`."""
        out = np.zeros(win_i.shape, bool)
        pos = pairs.pool_vectors[np.maximum(pairs.positive, 0)]
        for s in range(0, len(win_i), ROW_BLOCK):
            idx = win_i[s : s + ROW_BLOCK]
            cand = pairs.pool_vectors[np.maximum(idx, 0)]
            out[s : s + ROW_BLOCK] = (
                np.einsum("rwd,rd->rw", cand, pos[s : s + ROW_BLOCK]) >= self.config.near_dup
            )
        return out

    def _teacher_scores(
        self, table: pa.Table, pairs: PairEmbeddings, win_i: np.ndarray, chosen: list[np.ndarray]
    ) -> list[list[float]] | None:
        """Teacher cosine of each query with [positive] + its mined negatives."""
        if self.teacher is None:
            return None
        cand = [
            np.concatenate([[pairs.positive[r]], win_i[r, cols]]).astype(np.int64)
            for r, cols in enumerate(chosen)
        ]
        needed = np.unique(np.concatenate(cand)) if cand else np.zeros(0, np.int64)
        needed = needed[needed >= 0]
        vecs = self.teacher.encode([pairs.pool[i] for i in needed])
        where = {int(p): i for i, p in enumerate(needed)}
        rows = np.flatnonzero(pairs.valid)
        instr = table.column("instruction").to_pylist() if self.config.instructions else None
        queries = table.column("query").to_pylist()
        q = self.teacher.encode_queries(
            [queries[i].strip() for i in rows], [instr[i] for i in rows] if instr else None
        )
        out: list[list[float]] = [[] for _ in range(table.num_rows)]
        for qv, r in zip(q, rows, strict=True):
            c = vecs[[where[int(i)] for i in cand[r]]]
            out[r] = [round(float(s), 4) for s in c @ qv]
        return out


def _meta(text: str | None) -> dict:
    """A record's meta as a dict (non-object JSON is kept under `meta`)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"meta": text}
    return value if isinstance(value, dict) else {"meta": value}
