"""Text-to-persona: who would read or write this passage? (Persona Hub, used by KaLM.)

Passages are sampled from a corpus (seeded, so the same command samples the same passages),
the LLM answers with one sentence, and personas that say the same thing are merged: exact
after normalisation, then near-duplicates by word Jaccard (MinHash LSH from `datasketch` finds
candidates, the exact Jaccard decides). A persona is stored as a retrieval record (category
`persona`): `query` = the persona, `positive` = the passage it came from, so the persona set is
itself usable as "persona -> texts this person reads" training data.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np
import pyarrow as pa

from corpus.operator import OpResult, split_by_mask
from corpus.schema import UNKNOWN_LANGUAGE, attach_ids
from synth.prompts import PersonaTemplate
from synth.validate import CJK, normalise

_LABEL = re.compile(r"^\s*(?:\*\*)?(?:persona|answer|description)\s*:\s*(?:\*\*)?\s*", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s")


def job_id(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def sample_passages(table: pa.Table, n: int, seed: int, source: str) -> pa.Table:
    """Up to `n` distinct passages, seeded; the longer of query and positive is the passage."""
    texts = []
    for q, p in zip(
        table.column("query").to_pylist(), table.column("positive").to_pylist(), strict=True
    ):
        texts.append(max((q or "", p or ""), key=len).strip())
    order = np.random.default_rng(seed).permutation(len(texts))
    ids = table.column("id").to_pylist()
    langs = table.column("language").to_pylist()
    seen: set[str] = set()
    rows: dict[str, list] = {"job_id": [], "passage_id": [], "passage": [], "language": []}
    for i in order:
        key = normalise(texts[i])
        if len(key) < 20 or key in seen:
            continue
        seen.add(key)
        rows["job_id"].append(job_id("persona", source, ids[i]))
        rows["passage_id"].append(ids[i])
        rows["passage"].append(texts[i])
        rows["language"].append(langs[i] or UNKNOWN_LANGUAGE)
        if len(rows["job_id"]) >= n:
            break
    return pa.table(rows, schema=PASSAGE_JOBS)


PASSAGE_JOBS = pa.schema(
    [
        ("job_id", pa.string()),
        ("passage_id", pa.string()),
        ("passage", pa.string()),
        ("language", pa.string()),
    ]
)


def parse_persona(text: str, template: PersonaTemplate) -> tuple[str | None, str | None]:
    """The first sentence of the answer, cleaned; or the reason it is not a persona."""
    line = next((s for s in text.strip().splitlines() if s.strip()), "")
    line = _LABEL.sub("", line).strip().strip("\"'*` ")
    sentence = _SENTENCE_END.split(line, maxsplit=1)[0].strip()
    words = sentence.split()
    if not words:
        return None, "empty"
    if len(words) < template.min_words:
        return None, "too_short"
    if len(words) > template.max_words:
        return None, "too_long"
    if normalise(sentence) == normalise(template.shot_persona):
        return None, "copied_example"
    return sentence if sentence.endswith((".", "。")) else sentence + ".", None


def _tokens(text: str) -> set[str]:
    """Words, and single characters for CJK (which has no spaces)."""
    out: set[str] = set()
    for word in normalise(text).split():
        out.update(word if CJK.search(word) else [word])
    return out


def near_duplicates(texts: list[str], threshold: float, num_perm: int = 64) -> list[int | None]:
    """For each text, the index of an earlier kept text it duplicates, or None if it is kept.

    datasketch is imported here, not at module load: it pulls in scipy (~0.8 s), and every
    `kalmix` command imports this module through the synth sub-app.
    """
    from datasketch import MinHash, MinHashLSH

    token_sets = [_tokens(t) for t in texts]
    keys = [" ".join(sorted(s)) for s in token_sets]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = MinHash.bulk([[w.encode() for w in s] for s in token_sets], num_perm=num_perm)
    first_by_key: dict[str, int] = {}
    out: list[int | None] = []
    for i, (tokens, key, mh) in enumerate(zip(token_sets, keys, hashes, strict=True)):
        if key in first_by_key:
            out.append(first_by_key[key])
            continue
        match = None
        for j in lsh.query(mh):
            other = token_sets[j]
            if len(tokens & other) / max(1, len(tokens | other)) >= threshold:
                match = j
                break
        out.append(match)
        if match is None:
            first_by_key[key] = i
            lsh.insert(i, mh)
    return out


def personas_to_records(
    jobs: pa.Table, results: pa.Table, meta: dict[str, Any], threshold: float
) -> OpResult:
    """Persona records from finished jobs; rejected jobs and duplicates become removals."""
    by_job = {r["job_id"]: r for r in results.to_pylist()}
    kept_rows, failed = [], []
    for job in jobs.to_pylist():
        result = by_job[job["job_id"]]
        if result["ok"]:
            kept_rows.append((job, result))
        else:
            failed.append((job, result))
    personas = [json.loads(r["outputs"])["persona"] for _, r in kept_rows]
    n = len(kept_rows)
    table = attach_ids(
        pa.table(
            {
                "task_type": ["retrieval"] * n,
                "category": ["persona"] * n,
                "instruction": [None] * n,
                "query": personas,
                "positive": [job["passage"] for job, _ in kept_rows],
                "negatives": [[] for _ in range(n)],
                "score": pa.nulls(n, pa.float64()),
                "label": pa.nulls(n, pa.string()),
                "language": [job["language"] for job, _ in kept_rows],
                "source": ["synth"] * n,
                "meta": [
                    json.dumps(
                        {
                            **meta,
                            "passage_id": job["passage_id"],
                            "job_id": job["job_id"],
                            "attempts": result["attempts"],
                        },
                        ensure_ascii=False,
                    )
                    for job, result in kept_rows
                ],
            }
        )
    )
    dup_of = near_duplicates(personas, threshold)
    ids = table.column("id").to_pylist()
    kept, removed = split_by_mask(
        table,
        [d is None for d in dup_of],
        [None if d is None else "duplicate" for d in dup_of],
        [
            None if d is None else {"duplicate_of": ids[d], "persona": personas[i]}
            for i, d in enumerate(dup_of)
        ],
    )
    rejected = rejection_removals(failed)
    return OpResult(
        kept,
        pa.concat_tables([rejected, removed], promote_options="permissive"),
        {"duplicates_removed": removed.num_rows},
    )


def rejection_removals(failed: list[tuple[dict, dict]]) -> pa.Table:
    """Removal rows for rejected jobs: id = job id, reason, and the last raw output."""
    return pa.table(
        {
            "id": [job["job_id"] for job, _ in failed],
            "reason": [result["reason"] for _, result in failed],
            "detail": [
                json.dumps(
                    {"raw": (result["raw"] or "")[:500], "attempts": result["attempts"]},
                    ensure_ascii=False,
                )
                for _, result in failed
            ],
        },
        schema=pa.schema([("id", pa.string()), ("reason", pa.string()), ("detail", pa.string())]),
    )
