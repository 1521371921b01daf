"""Text-to-persona: who would read or write this passage? (Persona Hub, used by KaLM.)

Passages are sampled from a corpus (seeded, so the same command samples the same passages),
the LLM answers with one sentence, and personas that say the same thing are merged: exact
after normalisation, then near-duplicates by word Jaccard (words as the dedup filter splits
them, `corpus.text`; MinHash LSH from `corpus.minhash` finds candidates, the exact Jaccard
decides). A persona is stored as a retrieval record (category `persona`): `query` = the
persona, `positive` = the passage it came from, so the persona set is itself usable as
"persona -> texts this person reads" training data.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpus.minhash import MinHashConfig, MinHasher, candidate_pairs, lsh_params
from corpus.operator import OpResult, removal_table, split_by_mask
from corpus.schema import DEFAULT_ID_ALGORITHM, UNKNOWN_LANGUAGE, record_table
from corpus.text import ngram_spans, normalized, shingle_text
from synth.prompts import PersonaTemplate

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
    keys = normalized(texts, tokens=True)
    seen: set[str] = set()
    rows: dict[str, list] = {"job_id": [], "passage_id": [], "passage": [], "language": []}
    for i in order:
        key = keys[i]
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
    said, shot = normalized([sentence, template.shot_persona], tokens=True)
    if said == shot:
        return None, "copied_example"
    return sentence if sentence.endswith((".", "。")) else sentence + ".", None


def _word_sets(texts: list[str]) -> list[frozenset[bytes]]:
    """Each text's words as the dedup filter shingles them (token form; characters for CJK and
    mixed text, which has no spaces), as a set."""
    norm, char = shingle_text(pa.array(texts, pa.string()))
    spans = ngram_spans(norm, char, 1)
    data = spans.data.tobytes()
    words: list[set[bytes]] = [set() for _ in texts]
    for doc, start, end in zip(
        spans.doc.tolist(), spans.start.tolist(), spans.end.tolist(), strict=True
    ):
        words[doc].add(data[start:end])
    return [frozenset(w) for w in words]


def near_duplicates(texts: list[str], threshold: float, num_perm: int = 64) -> list[int | None]:
    """For each text, the index of an earlier kept text it duplicates, or None if it is kept.

    The same words (as sets) make a duplicate outright; otherwise the candidates are the earlier
    kept texts that share an LSH bucket with it (every pair in a bucket, as a MinHash LSH query
    finds them) and the first whose exact word Jaccard reaches `threshold` is the one it
    duplicates. datasketch (for the permutations) is imported only when this runs: it pulls in
    scipy (~0.8 s), and every `kalmix` command imports this module through the synth sub-app.
    """
    words = _word_sets(texts)
    config = MinHashConfig(num_perm=num_perm, ngram=1)
    sig = MinHasher(config).signatures(pa.array(texts, pa.string()))
    bands, band_rows = lsh_params(threshold, num_perm)
    with_words = np.flatnonzero([len(w) > 0 for w in words])
    left, right = candidate_pairs(sig, with_words, bands, band_rows, max_group=len(texts))
    earlier: dict[int, list[int]] = {}
    for j, i in zip(left.tolist(), right.tolist(), strict=True):
        earlier.setdefault(i, []).append(j)
    first_by_words: dict[frozenset[bytes], int] = {}
    kept: set[int] = set()
    out: list[int | None] = []
    for i, mine in enumerate(words):
        if mine in first_by_words:
            out.append(first_by_words[mine])
            continue
        match = next(
            (
                j
                for j in earlier.get(i, ())
                if j in kept and len(mine & words[j]) / max(1, len(mine | words[j])) >= threshold
            ),
            None,
        )
        out.append(match)
        if match is None:
            first_by_words[mine] = i
            kept.add(i)
    return out


def personas_to_records(
    jobs: pa.Table,
    results: pa.Table,
    meta: dict[str, Any],
    threshold: float,
    id_algorithm: str = DEFAULT_ID_ALGORITHM,
) -> OpResult:
    """Persona records from finished jobs (`results`: one per job, in job order); rejected jobs
    and duplicates become removals. Ids by the workspace's `id_algorithm`."""
    by_job = {r["job_id"]: r for r in results.to_pylist()}
    kept_rows = [
        (job, by_job[job["job_id"]]) for job in jobs.to_pylist() if by_job[job["job_id"]]["ok"]
    ]
    personas = [json.loads(r["outputs"])["persona"] for _, r in kept_rows]
    table = record_table(
        personas,
        task_type="retrieval",
        category="persona",
        positive=[job["passage"] for job, _ in kept_rows],
        language=[job["language"] for job, _ in kept_rows],
        source="synth",
        id_algorithm=id_algorithm,
        meta=[
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
    )
    dup_of = near_duplicates(personas, threshold)
    ids = table.column("id").to_pylist()
    kept, removed = split_by_mask(
        table,
        [d is None for d in dup_of],
        [None if d is None else "duplicate" for d in dup_of],
        [
            None if d is None else {"dup_of": ids[d], "persona": personas[i]}
            for i, d in enumerate(dup_of)
        ],
    )
    rejected = rejection_removals(results)
    return OpResult(
        kept,
        pa.concat_tables([rejected, removed], promote_options="permissive"),
        {"duplicates_removed": removed.num_rows},
    )


def rejection_removals(results: pa.Table) -> pa.Table:
    """Removal rows for the rejected jobs of a result table (`synth.generate.RESULTS`), in its
    order: id = job id, the reason, and the last raw output with the attempts it took."""
    failed = results.filter(pc.invert(results.column("ok"))).to_pylist()
    return removal_table(
        [r["job_id"] for r in failed],
        [r["reason"] for r in failed],
        [{"raw": (r["raw"] or "")[:500], "attempts": r["attempts"]} for r in failed],
    )
