"""Near-dup dedup: `filters.dedup.Dedup` beside datasketch on 100k real-text documents.

Corpus: documents of ~190 words joined from real sentences (docstrings and comments of the
Python standard library, present on every machine with Python), plus ~8% Chinese documents
joined from the shared LCQMC/BQ/ATEC questions (character shingles). Planted: 5% near copies
with ~1% of their words (Chinese: characters) replaced, and 5% exact copies with changed case
and spacing.

Quality by exact Jaccard on the shingle sets (Python sets of the shingle strings, no hashing):
recall = share of planted pairs with true Jaccard >= 0.8 that end in the same cluster;
precision = share of removals whose true Jaccard with their `dup_of` is >= 0.8.

Baselines, same run: (a) datasketch's naive loop (`MinHash.update` per shingle, then
`MinHashLSH.query` + `insert`), (b) `MinHash.bulk` + `insertion_session`, both with
datasketch's default threshold/weights and Python shingling, on a subsample (they are too slow
for the whole corpus: docs/s is measured there and the full-corpus time extrapolated), on one
core and on all cores (signatures in a process pool). (c) datatrove: not run, see the .md.

Keeper: which copy of a planted pair survives (`filters.clusters` keeper rule). A second,
English-only corpus (KEEPER_DOCS documents, default 50,000; 2.5% of them are copies of each of
eight kinds): exact-normalised copies (upper case + doubled spaces, upper case only, doubled
spaces only, tabs and padding) and near copies (2 words replaced by words of running text; the
same + upper case + doubled spaces; the last 5% of the words cut; a boilerplate sentence
added). Two row orders: shuffled (row order says nothing) and copies last (after every
original). `Dedup` runs with each `--prefer` (longest: the old default; first; cleanest: the
new default) and the benchmark counts, per kind, the originals removed while their copy
survives. Beside them, computed on each planted pair from the same measures: the cleanest rule
with a length step before the row order (the variant not chosen). `uptime` is recorded before
and after.

Scale (`--scale`, `benchmarks/dedup_scale.py`): `kalmix dedup` through the CLI, on a fresh
workspace per size, of 1M, 2M and 4M English documents of ~150 words (5% near copies, 5% exact
copies; `--scale-docs` to choose the sizes), with `--memory-limit 4GB` on the default local
executor (out of core): wall seconds, docs/s, peak RSS of the CLI process and its pool workers
together, the stage times the version records, recall over the planted pairs and precision over
a sample of the removals; the smallest size again on one worker (1 -> all cores). Beside it,
datasketch (`MinHash.bulk` in a pool, `MinHashLSH` in one process) on 20,000 documents only: it
holds every signature as Python objects, and at its rate a million documents take most of an
hour. Writes the "scale" entry of results/dedup.json and the "Scale" section of results/dedup.md,
leaving the rest. A datatrove baseline is not run (see the .md).

Run: .venv/bin/python -m benchmarks.dedup [DOCS] [--keeper-docs N]   (default 100000, 50000)
     .venv/bin/python -m benchmarks.dedup --keeper-only [--keeper-docs N]
        only the keeper part (about a minute on 2 cores): replaces the keeper section of
        results/dedup.md and the "keeper" entry of results/dedup.json, leaves the rest.
     .venv/bin/python -m benchmarks.dedup --scale [--scale-docs 1000000,2000000]
        only the scale part (minutes per million documents on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import resource
import sysconfig
import tempfile
import time
import unicodedata
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import RESULTS, run_child, uptime, write_results
from benchmarks.dedup_scale import run_scale, write_section
from corpus.executor import default_workers

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS_PER_DOC = 190
NEAR_SHARE = EXACT_SHARE = 0.05
ZH_SHARE = 0.08
BASELINE_DOCS = {"naive": int(os.environ.get("NAIVE_DOCS", 1000)), "bulk": 4_000}


# --- corpus --------------------------------------------------------------------------------


def stdlib_sentences() -> list[str]:
    """Sentences (6-60 words) from docstrings and comments of the standard library's sources."""
    docstring = re.compile(r'"""(.*?)"""', re.S)
    comment = re.compile(r"^\s*# ?(.+)$", re.M)
    found: set[str] = set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for chunk in docstring.findall(source) + [" ".join(comment.findall(source))]:
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(chunk.split())):
                if 6 <= len(sentence.split()) <= 60 and re.search(r"[a-z]{3}", sentence):
                    found.add(sentence)
    return sorted(found)


def chinese_sentences() -> list[str]:
    out: list[str] = []
    for name in ("LCQMC-test.csv", "BQ_corpus-test.csv", "ATEC_CCKS-test.csv"):
        with open(SHARED / "pairs_zh" / name, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                out += [row["sentence1"], row["sentence2"]]
    return sorted(set(out))


def base_documents(n: int, rng: random.Random, zh_share: float = ZH_SHARE) -> list[str]:
    """n distinct documents of ~190 words (or ~300 Chinese characters) of real sentences."""
    english, chinese = stdlib_sentences(), chinese_sentences() if zh_share else []
    docs: list[str] = []
    seen: set[str] = set()
    i = 0
    while len(docs) < n:
        i += 1
        parts, size = [], 0
        zh = bool(zh_share) and i % round(1 / zh_share) == 0
        pool, target = (chinese, 300) if zh else (english, WORDS_PER_DOC)
        while size < target:
            sentence = pool[rng.randrange(len(pool))]
            parts.append(sentence)
            size += len(sentence) if zh else len(sentence.split())
        doc = ("，" if zh else " ").join(parts)
        if doc not in seen:
            seen.add(doc)
            docs.append(doc)
    return docs


def near_copy(doc: str, rng: random.Random, vocab: list[str]) -> str:
    """About 1% of the words (or characters for Chinese) replaced."""
    if re.search(r"[\u4e00-\u9fff]", doc):
        chars = list(doc)
        for _ in range(max(1, len(chars) // 100)):
            chars[rng.randrange(len(chars))] = "的"
        return "".join(chars)
    words = doc.split()
    for _ in range(max(1, round(len(words) / 100))):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def build_corpus(total: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Documents and planted (source, copy) pairs, copies shuffled among the originals."""
    rng = random.Random(0)
    n_near, n_exact = int(total * NEAR_SHARE), int(total * EXACT_SHARE)
    base = base_documents(total - n_near - n_exact, rng)
    vocab = sorted({w for d in base[:2000] for w in d.split()})
    docs = list(base)
    pairs = []
    for k, src in enumerate(rng.sample(range(len(base)), n_near + n_exact)):
        copy = near_copy(base[src], rng, vocab) if k < n_near else base[src].upper()
        if k >= n_near:
            copy = copy.replace(" ", "  ").replace("，", " ，")
        pairs.append((src, len(docs)))
        docs.append(copy)
    return shuffled(docs, pairs, rng)


def shuffled(docs: list[str], pairs: list[tuple[int, int]], rng: random.Random):
    """The documents in a random order, and the pairs renumbered to it."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    return [docs[i] for i in order], [(position[a], position[b]) for a, b in pairs]


# --- keeper corpus: planted noisy copies --------------------------------------------------

KEEPER_DOCS = 50_000
KEEPER_SHARE = 0.025  # of the corpus, per kind of copy
BOILERPLATE = (
    "Read more articles like this one on our website.",
    "Subscribe to our newsletter for weekly updates.",
    "Click here to share this page with your friends.",
)


def shout(text: str) -> str:
    return text.upper().replace(" ", "  ")


def edit_words(text: str, rng: random.Random, tokens: list[str], k: int = 2) -> str:
    """`k` words replaced by words drawn from running text (`tokens`, with repeats), so a
    replacement is as long as the word it replaces on average."""
    words = text.split()
    for _ in range(k):
        words[rng.randrange(len(words))] = rng.choice(tokens)
    return " ".join(words)


def truncate(text: str) -> str:
    words = text.split()
    return " ".join(words[: len(words) - max(1, len(words) // 20)])


COPY_KINDS = {  # kind -> (exact-normalised copy?, make(doc, rng, tokens))
    "upper case + doubled spaces": (True, lambda d, rng, t: shout(d)),
    "upper case": (True, lambda d, rng, t: d.upper()),
    "doubled spaces": (True, lambda d, rng, t: d.replace(" ", "  ")),
    "tabs + padding": (True, lambda d, rng, t: " " + d.replace(". ", ".\t") + "  "),
    "2 words replaced": (False, edit_words),
    "2 words replaced + upper case + doubled spaces": (
        False,
        lambda d, rng, t: shout(edit_words(d, rng, t)),
    ),
    "last 5% of words cut": (False, lambda d, rng, t: truncate(d)),
    "a boilerplate sentence added": (False, lambda d, rng, t: f"{d} {rng.choice(BOILERPLATE)}"),
}


def keeper_corpus(total: int) -> tuple[list[str], list[tuple[int, int, str]]]:
    """English documents and planted (original, copy, kind) triples: the originals in a random
    order, then every copy after them."""
    rng = random.Random(2)
    per_kind = int(total * KEEPER_SHARE)
    base = base_documents(total - per_kind * len(COPY_KINDS), rng, zh_share=0.0)
    tokens = [w for d in base[:2000] for w in d.split()]
    docs, planted = list(base), []
    sources = rng.sample(range(len(base)), per_kind * len(COPY_KINDS))
    for k, (kind, (_, make)) in enumerate(COPY_KINDS.items()):
        for src in sources[k * per_kind : (k + 1) * per_kind]:
            planted.append((src, len(docs), kind))
            docs.append(make(base[src], rng, tokens))
    return docs, planted


# --- exact Jaccard on the shingles both sides use -------------------------------------------


def shingles(text: str, n: int = 5) -> set[str]:
    """Token-normalised word 5-grams, or character 5-grams for CJK text (plain Python)."""
    t = unicodedata.normalize("NFKC", text).lower().replace("'", "")
    t = re.sub(r"[\W_]+", " ", t).strip()
    cjk = len(re.findall(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]", t))
    char = cjk > 0 and cjk >= 0.1 * len(t.replace(" ", ""))
    units = list(t.replace(" ", "")) if char else t.split()
    joiner = "" if char else " "
    grams = {joiner.join(units[i : i + n]) for i in range(len(units) - n + 1)}
    return grams or ({joiner.join(units)} if units else set())


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def quality(docs: list[str], pairs: list[tuple[int, int]], removed: list[tuple[int, int]]) -> dict:
    """Recall over planted pairs with true J >= 0.8; precision over (removed, dup_of) rows."""
    cache: dict[int, set[str]] = {}

    def sh(i: int) -> set[str]:
        if i not in cache:
            cache[i] = shingles(docs[i])
        return cache[i]

    parent = list(range(len(docs)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for row, keeper in removed:
        parent[row] = keeper
    true_pairs = [(a, b) for a, b in pairs if jaccard(sh(a), sh(b)) >= 0.8]
    caught = sum(root(a) == root(b) for a, b in true_pairs)
    good = sum(jaccard(sh(r), sh(k)) >= 0.8 for r, k in removed)
    return {
        "planted_pairs": len(pairs),
        "planted_pairs_true_j_ge_0_8": len(true_pairs),
        "recall": round(caught / max(1, len(true_pairs)), 4),
        "removed": len(removed),
        "precision": round(good / max(1, len(removed)), 4),
    }


# --- runs --------------------------------------------------------------------------------

KALMIX = """
import json, resource, sys, time
import pyarrow.parquet as pq
from filters.dedup import Dedup, DedupConfig

def cpu():
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

table = pq.read_table(sys.argv[1])
weights = tuple(float(x) for x in sys.argv[3].split(","))
start, cpu0 = time.perf_counter(), cpu()
result = Dedup(DedupConfig(fields=("query",), workers=int(sys.argv[2]), lsh_weights=weights))(table)
seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu0
pq.write_table(result.removed, sys.argv[4])
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "stats": result.stats}))
"""


def cpu_time() -> float:
    """CPU seconds of this process and its finished children: robust to a busy machine."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_kalmix(path: Path, out: Path, workers: int, weights: str, ids: dict[str, int]) -> dict:
    wall, peak, stdout = run_child(KALMIX, str(path), str(workers), weights, str(out))
    report = json.loads(stdout)
    removed = pq.read_table(out).to_pylist()
    rows = [(ids[r["id"]], ids[json.loads(r["detail"])["dup_of"]]) for r in removed]
    report.update(wall=wall, peak_mib=peak)
    return report, rows


def _datasketch_shingles(text: str) -> list[bytes]:
    return [s.encode() for s in shingles(text)]


def _naive_signatures(texts: list[str]):
    from datasketch import MinHash

    out = []
    for text in texts:
        m = MinHash(num_perm=128)
        for s in _datasketch_shingles(text):
            m.update(s)
        out.append(m)
    return out


def _bulk_signatures(texts: list[str]):
    from datasketch import MinHash

    return MinHash.bulk([_datasketch_shingles(t) for t in texts], num_perm=128)


def run_datasketch(texts: list[str], kind: str, workers: int) -> dict:
    """Signatures (pool of `workers` for > 1), then LSH query + insert in this process."""
    from datasketch import MinHashLSH

    sign = _naive_signatures if kind == "naive" else _bulk_signatures
    start, cpu0 = time.perf_counter(), cpu_time()
    if workers > 1:
        chunks = [texts[i::workers] for i in range(workers)]
        with get_context("spawn").Pool(workers) as pool:
            parts = pool.map(sign, chunks)
        sigs = [None] * len(texts)
        for w, part in enumerate(parts):
            sigs[w::workers] = part
    else:
        sigs = sign(texts)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    if kind == "naive":
        with_dups = 0
        for i, m in enumerate(sigs):
            with_dups += bool(lsh.query(m))
            lsh.insert(i, m)
    else:
        with lsh.insertion_session() as session:
            for i, m in enumerate(sigs):
                session.insert(i, m)
        with_dups = sum(len(lsh.query(m)) > 1 for m in sigs)
    seconds, cpu_seconds = time.perf_counter() - start, cpu_time() - cpu0
    return {
        "docs": len(texts),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "docs_per_s": len(texts) / seconds,
        "docs_per_cpu_s": len(texts) / cpu_seconds,
        "docs_with_candidates": with_dups,
    }


def corpus_table(docs: list[str]) -> pa.Table:
    """The documents as records (in `query`), ids attached."""
    from corpus.schema import record_table

    return record_table(docs, task_type="retrieval", category="bench", source="bench")


# --- keeper ------------------------------------------------------------------------------------

KEEPER_HEADING = "## Keeper"
RULES = {
    "longest": "longest (old default)",
    "first": "first (row order)",
    "cleanest": "cleanest (new default)",
}
WITH_LENGTH = "cleanest, then longest (pairwise)"
ORDERS = {
    "shuffled": "copies placed at random among the originals (row order says nothing)",
    "copies last": "every copy after all originals (the order of a corpus that grew by "
    "scraping: row order alone finds the original)",
}


def _keeper_order(docs, planted, order: str):
    """(documents, originals, copies, kinds) in `order`."""
    pairs = [(a, b) for a, b, _ in planted]
    if order == "shuffled":
        docs, pairs = shuffled(docs, pairs, random.Random(3))
    originals, copies = (np.array(side) for side in zip(*pairs, strict=True))
    return docs, originals, copies, np.array([k for _, _, k in planted])


def run_keeper(total: int) -> tuple[dict, str]:
    """The keeper measurement (see the module docstring): (results, markdown section)."""
    from filters.clusters import text_length, upper_case_tenths, whitespace_noise
    from filters.dedup import Dedup, DedupConfig

    load_before, start = uptime(), time.perf_counter()
    base_docs, planted = keeper_corpus(total)
    corpus_seconds = time.perf_counter() - start
    per_kind = len(planted) // len(COPY_KINDS)
    results: dict = {}
    for order in ORDERS:
        docs, originals, copies, kinds = _keeper_order(base_docs, planted, order)
        table = corpus_table(docs)
        ids = table.column("id").to_pylist()

        def count(original_gone: np.ndarray, copy_gone: np.ndarray, kinds=kinds) -> dict:
            out = {}
            for kind in COPY_KINDS:
                mine = kinds == kind
                out[kind] = {
                    "originals_removed": int((original_gone & ~copy_gone & mine).sum()),
                    "copies_removed": int((copy_gone & ~original_gone & mine).sum()),
                    "neither_or_both": int((mine & (original_gone == copy_gone)).sum()),
                }
            return out

        runs: dict = {}
        for prefer in RULES:
            began = time.perf_counter()
            result = Dedup(DedupConfig(fields=("query",), prefer=prefer))(table)
            seconds = time.perf_counter() - began
            gone = set(result.removed.column("id").to_pylist())
            removed = np.array([i in gone for i in ids])
            runs[prefer] = {
                "seconds": round(seconds, 2),
                "exact_duplicates": result.stats["exact_duplicates"],
                "near_duplicates": result.stats["near_duplicates"],
                "by_kind": count(removed[originals], removed[copies]),
            }
            print("keeper", order, prefer, json.dumps(runs[prefer]))
        # The cleanest rule with a length step before the row order, on each planted pair from
        # the rule's own measures (the pair is its cluster: originals are distinct).
        both = table.select(["query"]).take(pa.array(np.concatenate([originals, copies])))
        f = ("query",)
        keys = zip(
            upper_case_tenths(both, f),
            whitespace_noise(both, f),
            -text_length(both, f),
            strict=True,
        )
        keys = [(*k, row) for k, row in zip(keys, np.concatenate([originals, copies]), strict=True)]
        m = len(planted)
        loses = np.array([keys[m + i] < keys[i] for i in range(m)])
        runs[WITH_LENGTH] = {"by_kind": count(loses, ~loses)}
        results[order] = runs

    keeper = {
        "docs": len(base_docs),
        "copies_per_kind": per_kind,
        "corpus_seconds": round(corpus_seconds, 1),
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "orders": results,
    }
    labels = {**RULES, WITH_LENGTH: WITH_LENGTH}

    def removed_originals(runs: dict, rule: str, exact: bool | None = None) -> int:
        return sum(
            c["originals_removed"]
            for kind, c in runs[rule]["by_kind"].items()
            if exact is None or COPY_KINDS[kind][0] == exact
        )

    lines = [
        KEEPER_HEADING + ": originals removed instead of their copy",
        "",
        f"{len(base_docs):,} English documents (stdlib docstrings and comments, ~190 words) "
        f"with {per_kind:,} planted copies of each kind; `Dedup` with threshold 0.8, 128 "
        f"permutations, all cores. Each cell: originals removed while their copy survived, of "
        f"{per_kind:,} (totals: of {per_kind * 4:,}). Uptime before: "
        f"`{keeper['uptime_before']}`; after: `{keeper['uptime_after']}`.",
    ]
    for order, runs in results.items():
        lines += [
            "",
            f"{order.capitalize()}: {ORDERS[order]}.",
            "",
            "| planted copy | kind | " + " | ".join(labels.values()) + " |",
            "|---|---|" + "---|" * len(labels),
        ]
        for kind, (exact, _) in COPY_KINDS.items():
            cells = " | ".join(f"{runs[r]['by_kind'][kind]['originals_removed']:,}" for r in labels)
            lines.append(f"| {kind} | {'exact-normalised' if exact else 'near'} | {cells} |")
        for name, exact in (("all exact-normalised copies", True), ("all near copies", False)):
            cells = " | ".join(f"**{removed_originals(runs, r, exact):,}**" for r in labels)
            lines.append(f"| {name} | | {cells} |")
    missed = {
        f"{order} {r}": sum(c["neither_or_both"] for c in runs[r]["by_kind"].values())
        for order, runs in results.items()
        for r in RULES
    }
    seconds = ", ".join(
        f"{order} {r} {runs[r]['seconds']:.1f}" for order, runs in results.items() for r in RULES
    )
    lines += [
        "",
        "The pairwise column ranks the two members of each planted pair by the cleanest rule's "
        "measures (upper-case tenths, whitespace noise) with the length step of `longest` "
        "before the row order: the variant of the rule with a length step, not run as an "
        "operator. Pairs where neither or both members were removed: "
        + ", ".join(f"{r} {k}" for r, k in missed.items())
        + f". Operator seconds per run: {seconds}; corpus built in {corpus_seconds:.0f} s.",
    ]
    return keeper, "\n".join(lines)


def write_keeper_only(keeper: dict, section: str) -> None:
    """Replace the keeper part of results/dedup.{json,md}; the other figures stay as they are."""
    json_path = RESULTS / "dedup.json"
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    section += (
        f"\n\nThis section is from a `--keeper-only` run ({keeper['when']}); the figures "
        f"above it are from the last full run ({data.get('when', 'unknown')})."
    )
    write_section("keeper", KEEPER_HEADING, keeper, section)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("docs", nargs="?", type=int, default=100_000, help="default 100000")
    parser.add_argument(
        "--keeper-docs", type=int, default=KEEPER_DOCS, help=f"default {KEEPER_DOCS}"
    )
    parser.add_argument(
        "--keeper-only", action="store_true", help="run only the keeper measurement"
    )
    parser.add_argument("--scale", action="store_true", help="run only the scale measurement")
    parser.add_argument(
        "--scale-docs", default="1000000,2000000,4000000", help="default 1000000,2000000,4000000"
    )
    parser.add_argument(
        "--scale-before",
        metavar="TREE",
        help="also run the smallest size with the CLI of this source tree (an earlier commit, "
        "e.g. from git archive), beside the current one",
    )
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.keeper_only:
        write_keeper_only(*run_keeper(args.keeper_docs))
        return
    if args.scale:
        run_scale([int(n) for n in args.scale_docs.split(",")], before=args.scale_before)
        return
    start = time.perf_counter()
    docs, pairs = build_corpus(args.docs)
    build_seconds = time.perf_counter() - start
    cores = default_workers()
    words = np.mean([len(d.split()) for d in docs[:2000] if not re.search(r"[\u4e00-\u9fff]", d)])
    n = len(docs)
    table = corpus_table(docs)
    ids = {i: k for k, i in enumerate(table.column("id").to_pylist())}
    assert len(ids) == n, "document ids must be unique"
    results: dict = {"docs": n, "mean_words": round(float(words), 1), "cores": cores}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.parquet"
        pq.write_table(table, path)
        runs = {}
        for label, workers, weights in (
            ("kalmix, all cores", 0, "0.1,0.9"),
            ("kalmix, 1 core", 1, "0.1,0.9"),
            ("kalmix, all cores, datasketch weights 0.5,0.5", 0, "0.5,0.5"),
        ):
            report, removed = run_kalmix(path, Path(tmp) / "removed.parquet", workers, weights, ids)
            report["quality"] = quality(docs, pairs, removed)
            report["docs_per_s"] = n / report["seconds"]
            report["docs_per_cpu_s"] = n / report["cpu_seconds"]
            runs[label] = report
            print(label, json.dumps(report))
    rng = random.Random(1)
    baselines = {}
    for kind, size in BASELINE_DOCS.items():
        sample = rng.sample(docs, min(size, n))
        for workers in (1, cores):
            key = f"datasketch {kind}, {workers} core{'s' if workers > 1 else ''}"
            baselines[key] = run_datasketch(sample, kind, workers)
            print(key, json.dumps(baselines[key]))
    results.update(runs=runs, baselines=baselines, corpus_seconds=round(build_seconds, 1))
    naive = baselines["datasketch naive, 1 core"]
    load = os.getloadavg()[0]
    lines = [
        f"{n:,} documents (mean {words:.0f} words; {ZH_SHARE:.0%} Chinese), "
        f"{len(pairs):,} planted copies ({NEAR_SHARE:.0%} near with ~1% words replaced, "
        f"{EXACT_SHARE:.0%} exact with changed case/spacing); threshold 0.8, 128 permutations, "
        f"5-gram shingles; machine: {cores} cores, load average {load:.1f} at the end of the run "
        "(other jobs shared the cores, so wall-clock figures are pessimistic and noisy; "
        "docs per CPU-second is the robust comparison).",
        "",
        "| method | docs/s (wall) | docs per CPU-s | x naive (CPU) | x naive (wall) "
        "| corpus s | peak MiB | recall | precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        q = r["quality"]
        lines.append(
            f"| {label} | {r['docs_per_s']:,.0f} | {r['docs_per_cpu_s']:,.0f} | "
            f"{r['docs_per_cpu_s'] / naive['docs_per_cpu_s']:.1f}x | "
            f"{r['docs_per_s'] / naive['docs_per_s']:.1f}x | {r['seconds']:.1f} | "
            f"{r['peak_mib']:.0f} | {q['recall']:.4f} | {q['precision']:.4f} |"
        )
    for label, r in baselines.items():
        lines.append(
            f"| {label} (on {r['docs']:,} docs) | {r['docs_per_s']:,.0f} | "
            f"{r['docs_per_cpu_s']:,.0f} | {r['docs_per_cpu_s'] / naive['docs_per_cpu_s']:.1f}x | "
            f"{r['docs_per_s'] / naive['docs_per_s']:.1f}x | {n / r['docs_per_s']:.0f} "
            "(extrapolated) | | | |"
        )
    one, allc = runs["kalmix, 1 core"], runs["kalmix, all cores"]
    lines += [
        "",
        f"Scaling 1 -> {cores} cores (wall): whole operator "
        f"{allc['docs_per_s'] / one['docs_per_s']:.2f}x, signature step "
        f"{one['stats']['signature_seconds'] / allc['stats']['signature_seconds']:.2f}x "
        "(spawned workers; exact pass, LSH and clustering run in one process).",
        "kalmix figures are the operator's own time (exact pass, signatures, LSH, verification, "
        "clustering) on the table in memory; peak MiB is the benchmark child process (pool "
        "workers not included). Baselines: signatures in the pool, LSH in the parent.",
        "Planted pairs with true Jaccard >= 0.8: "
        f"{one['quality']['planted_pairs_true_j_ge_0_8']:,} of {len(pairs):,}.",
        "datatrove (c) was not run: datatrove 0.10.1 installs quickly (2 small deps) but its "
        "MinHash step needs orjson and, for its English word tokenizer, spaCy (17 more packages "
        "including thinc and blis), which this project does not install.",
    ]
    keeper, section = run_keeper(args.keeper_docs)
    results["keeper"] = keeper
    write_results("dedup", results, "\n".join(lines) + "\n\n" + section)


if __name__ == "__main__":
    main()
