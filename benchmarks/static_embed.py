"""The built-in `minilm-static` beside all-MiniLM-L6-v2: speed, STS-B score, semdedup threshold.

Same run, same texts, same `filters.embedder.Embedder` (no cache, so every text is embedded):
- texts/s of each model on real short texts (Banking77 test queries and STS-B en test
  sentences), batch 64, CPU; both models loaded (and minilm-static built) before any timing;
  alternating runs, each side's best kept (the machine is shared);
- Spearman of cosine against gold on STS-B en test (the issue reports 0.661 for model2vec's own
  distillation of MiniLM);
- the semantic-dedup curve on STS-B en dev, the way filters/semdedup.py chose 0.85 for MiniLM:
  for each threshold, the share of pairs that end with one keeper, by gold band (5.0 = same
  meaning, 3-4 = partly different, <= 1.0 = unrelated). The chosen default is the lowest
  threshold at which no unrelated pair and at most as many partly-different pairs merge as
  with MiniLM at 0.85: it keeps as many same-meaning merges as that allows.

Run: .venv/bin/python -m benchmarks.static_embed [TEXTS]   (default 2000)
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from benchmarks.common import sizes, write_results
from corpus.schema import attach_ids
from filters.embedder import Embedder
from filters.semdedup import SemanticDedup, SemDedupConfig, default_threshold

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXTS = sizes(__doc__, texts=2000).texts
BATCH = 64
GRID = [round(x, 2) for x in np.arange(0.70, 0.991, 0.01)]


def stsb(split: str) -> list[tuple[str, str, float]]:
    with open(SHARED / "stsb" / f"en-{split}.csv", newline="", encoding="utf-8") as fh:
        return [
            (r["sentence1"].strip(), r["sentence2"].strip(), float(r["score"]))
            for r in csv.DictReader(fh)
        ]


def short_texts(n: int) -> list[str]:
    with open(SHARED / "banking77" / "test.csv", newline="", encoding="utf-8") as fh:
        texts = [r["text"].strip() for r in csv.DictReader(fh)]
    texts += [s for a, b, _ in stsb("test") for s in (a, b)]
    return texts[:n]


def throughput(embedder: Embedder, texts: list[str]) -> float:
    start = time.perf_counter()
    embedder._run_model(texts, None)  # the model itself: no cache, no dedup of repeats
    return len(texts) / (time.perf_counter() - start)


def spearman(embedder: Embedder, rows) -> float:
    a = embedder.encode([r[0] for r in rows])
    b = embedder.encode([r[1] for r in rows])
    return float(spearmanr((a * b).sum(axis=1), [r[2] for r in rows]).statistic)


def dedup_curve(embedder: Embedder, rows) -> dict[float, dict[str, float]]:
    import pyarrow as pa

    sentences = list(dict.fromkeys(s for a, b, _ in rows for s in (a, b)))
    n = len(sentences)
    table = attach_ids(
        pa.table(
            {
                "task_type": ["sts"] * n,
                "category": ["test"] * n,
                "instruction": pa.array([None] * n, pa.string()),
                "query": sentences,
                "positive": pa.array([None] * n, pa.string()),
                "negatives": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
                "score": pa.array([None] * n, pa.float64()),
                "label": pa.array([None] * n, pa.string()),
                "language": ["en"] * n,
                "source": ["stsb"] * n,
                "meta": ["{}"] * n,
            }
        )
    )
    id_of = dict(zip(sentences, table.column("id").to_pylist(), strict=True))
    gold = np.array([g for _, _, g in rows])
    bands = {"same": gold == 5.0, "partly": (gold >= 3.0) & (gold < 4.0), "unrelated": gold <= 1.0}
    curve = {}
    for threshold in GRID:
        result = SemanticDedup(embedder, SemDedupConfig(threshold=threshold))(table)
        keeper = {i: i for i in result.table.column("id").to_pylist()}
        for row in result.removed.to_pylist():
            keeper[row["id"]] = json.loads(row["detail"])["dup_of"]
        together = np.array([keeper[id_of[a]] == keeper[id_of[b]] for a, b, _ in rows])
        curve[threshold] = {k: float(together[m].mean()) for k, m in bands.items()}
    return curve


def main() -> None:
    load_before = os.getloadavg()
    cache = Path(tempfile.mkdtemp(prefix="bench-static-"))
    texts = short_texts(TEXTS)
    t0 = time.perf_counter()
    static = Embedder("minilm-static", cache, batch_size=BATCH, device="cpu")
    static.model  # noqa: B018 - build and load before timing
    build_s = time.perf_counter() - t0
    minilm = Embedder(None, None, batch_size=BATCH, device="cpu")
    minilm.model  # noqa: B018
    rates: dict[str, list[float]] = {"all-MiniLM-L6-v2": [], "minilm-static": []}
    for _ in range(2):
        rates["all-MiniLM-L6-v2"].append(throughput(minilm, texts[: max(200, TEXTS // 4)]))
        rates["minilm-static"].append(throughput(static, texts))
    best = {k: max(v) for k, v in rates.items()}
    test = stsb("test")
    scores = {"all-MiniLM-L6-v2": spearman(minilm, test), "minilm-static": spearman(static, test)}
    dev = stsb("dev")
    curves = {
        "all-MiniLM-L6-v2": dedup_curve(minilm, dev),
        "minilm-static": dedup_curve(static, dev),
    }
    reference = curves["all-MiniLM-L6-v2"][0.85]
    ok = [
        t
        for t, c in curves["minilm-static"].items()
        if c["unrelated"] == 0.0 and c["partly"] <= reference["partly"]
    ]
    chosen = min(ok) if ok else None
    load = {"before": load_before, "after": os.getloadavg()}
    speedup = best["minilm-static"] / best["all-MiniLM-L6-v2"]
    lines = [
        f"{len(texts)} real short texts (Banking77 + STS-B en test; MiniLM timed on the first "
        f"{max(200, TEXTS // 4)}), batch {BATCH}, CPU, best of 2 alternating runs. "
        f"minilm-static built (distilled) in {build_s:.0f} s, once per workspace.",
        "",
        "| model | texts/s | vs MiniLM | STS-B en test Spearman |",
        "|---|---|---|---|",
    ]
    for name in rates:
        lines.append(
            f"| {name} | {best[name]:,.0f} | {best[name] / best['all-MiniLM-L6-v2']:.0f}x | "
            f"{scores[name]:.4f} |"
        )
    lines += [
        "",
        "Semantic dedup on STS-B en dev (share of pairs ending with one keeper):",
        "",
        "| threshold | MiniLM same / partly / unrelated | minilm-static same / partly / unrelated |",
        "|---|---|---|",
    ]
    for t in GRID:
        a, b = curves["all-MiniLM-L6-v2"][t], curves["minilm-static"][t]
        lines.append(
            f"| {t:.2f} | {a['same']:.1%} / {a['partly']:.1%} / {a['unrelated']:.1%} | "
            f"{b['same']:.1%} / {b['partly']:.1%} / {b['unrelated']:.1%} |"
        )
    lines += [
        "",
        f"Rule (MiniLM's 0.85 as reference: {reference['partly']:.1%} of partly-different pairs "
        f"merge, no unrelated pair does): the lowest minilm-static threshold with no unrelated "
        f"merge and at most that share of partly-different merges is {chosen}; the default in "
        f"filters/semdedup.py is {default_threshold('minilm-static')}.",
        "",
        f"Load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after (2 cores, "
        "shared with other engineers).",
    ]
    write_results(
        "static_embed",
        {
            "texts": len(texts),
            "texts_per_s": best,
            "rounds": rates,
            "speedup": speedup,
            "stsb_en_test_spearman": scores,
            "build_seconds": build_s,
            "semdedup_curve_dev": {k: {str(t): c for t, c in v.items()} for k, v in curves.items()},
            "chosen_threshold": chosen,
            "load_average": load,
        },
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()
