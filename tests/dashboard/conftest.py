"""A real workspace for the dashboard tests: the bundled sample ingested, two derived versions
with removals (through `kalmix.pipeline.apply`), two mixture versions (`create_mixture`), runs
in every state with metrics and logs, and scores for runs (full splits and samples, as
`kalmix eval run --limit` stores them) plus reference models.

Runs and scores rows are written through `Catalog.write()` the way the trainer and `kalmix eval`
record them, so the pages are tested without training a model.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from catalog import mixtures, runs, scores, versions
from catalog.db import Catalog
from catalog.workspace import Workspace
from corpus.operator import OpResult, split_by_mask
from kalmix.ingest import ingest
from kalmix.pipeline import apply
from tests.conftest import SHARED_DATA

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
SAMPLES = (
    ("faq_multilingual.jsonl", "faq", "faq-retrieval"),
    ("sts_pairs.jsonl", "sts-sample", "multilingual-sts"),
    ("intents.jsonl", "support-intents", "banking-intent"),
)
# The tasks of ../shared/data/reference_scores.csv and their catalog task types.
TASKS = {
    "STSBenchmark": "sts",
    "STS22": "sts",
    "LCQMC": "sts",
    "BQ": "sts",
    "ATEC": "sts",
    "STSB": "sts",
    "Banking77Classification": "classification",
    "SciFact": "retrieval",
    "NFCorpus": "retrieval",
    "ArguAna": "retrieval",
    "AskUbuntuDupQuestions": "reranking",
    "SciDocsRR": "reranking",
    "TwentyNewsgroupsClustering": "clustering",
}
RUN_TASKS = (
    "STSBenchmark",
    "LCQMC",
    "Banking77Classification",
    "SciFact",
    "AskUbuntuDupQuestions",
    "TwentyNewsgroupsClustering",
)
REFERENCE_MODELS = (
    "HIT-TMG/KaLM-embedding-multilingual-mini-instruct-v1.5",
    "BAAI/bge-small-en-v1.5",
    "intfloat/multilingual-e5-small",
    "sentence-transformers/all-MiniLM-L6-v2",
)


def exact_dup(table: pa.Table) -> OpResult:
    """Keep the first row of each query text (a tiny real operator for the lineage)."""
    first: dict[str, str] = {}
    reasons: list[str | None] = []
    details: list[dict | None] = []
    for rid, query in zip(
        table.column("id").to_pylist(), table.column("query").to_pylist(), strict=True
    ):
        duplicate = query in first
        first.setdefault(query, rid)
        reasons.append("exact_dup" if duplicate else None)
        details.append({"duplicate_of": first[query]} if duplicate else None)
    kept, removed = split_by_mask(table, [r is None for r in reasons], reasons, details)
    return OpResult(kept, removed, {"duplicates": removed.num_rows})


def short_answers(table: pa.Table) -> OpResult:
    lengths = pc.utf8_length(table.column("positive")).to_pylist()
    keep = [n >= 40 for n in lengths]
    reasons = [None if k else "too_short" for k in keep]
    details = [None if k else {"chars": n} for k, n in zip(keep, lengths, strict=True)]
    kept, removed = split_by_mask(table, keep, reasons, details)
    return OpResult(kept, removed, {"min_chars": 40})


def dead_pid() -> int:
    """The pid of a process that has exited (a run whose process is gone)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def build_workspace(root: Path) -> Workspace:
    ws = Workspace.init(root)
    cat = Catalog.open(ws)
    sample = resources.files("corpus") / "sample"
    for file, name, category in SAMPLES:
        with resources.as_file(sample / file) as path:
            ingest(cat, path, name=name, category=category)
    faq1 = versions.resolve(cat, "faq@v1")
    apply(cat, faq1, exact_dup, operation="dedup", params={"mode": "exact"})
    apply(cat, versions.resolve(cat, "faq@v2"), short_answers, operation="filter", params={})
    mixtures.create_mixture(
        cat, "mix-a", {"where": "task_type in ('retrieval', 'classification')", "seed": 1}
    )
    mixtures.create_mixture(
        cat, "mix-a", {"where": "true", "weighting": "uniform", "budget": 200, "seed": 1}
    )
    _runs_and_scores(ws, cat)
    return ws


SAMPLE_LIMIT = 100


def sampled_rows(runs_: tuple[str, ...]) -> list[scores.ScoreRow]:
    """Quick checks as `kalmix eval run RUN --limit 100` stores them (split `test-sample100`),
    scored a little above each run's full-split scores so the two are told apart."""
    return [
        scores.ScoreRow(
            model=run,
            task=task,
            task_type=TASKS[task],
            split=f"test{scores.SAMPLE_SPLIT_MARK}{SAMPLE_LIMIT}",
            subset="default",
            main_score=0.50 + 0.01 * j + 0.03 * i,
            run=run,
        )
        for i, task in enumerate(RUN_TASKS)
        for j, run in enumerate(runs_)
    ]


def _runs_and_scores(ws: Workspace, cat) -> None:
    """Runs as the trainer records them and scores as `kalmix eval` and the reference import
    do, through `catalog.runs` and `catalog.scores`."""
    for name, status, version, error in (
        ("run-a", "completed", 1, None),
        ("run-b", "failed", 2, "RuntimeError: loss became NaN at step 12"),
        ("run-c", "completed", 2, None),
        ("run-d", "running", 2, None),  # its process is gone: a stale row
    ):
        folder = runs.run_dir(cat, name)
        folder.mkdir(parents=True, exist_ok=True)
        steps = 12 if status == "failed" else 40
        with open(folder / "metrics.jsonl", "w") as fh:
            for step in range(1, steps + 1):
                row = {
                    "step": step,
                    "loss": 2.0 / step**0.5,
                    "lr": 1e-5 * min(1.0, step / 10),  # warm-up
                    "samples_per_s": 50.0 + 2 * math.sin(step / 4),
                }
                fh.write(json.dumps(row) + "\n")
        end = f"Traceback (most recent call last):\n{error}\n" if error else "done\n"
        (folder / "stdout.log").write_text(f"training {name} on mix-a@v{version}\n{end}")
        runs.create_run(
            cat,
            name,
            mixture="mix-a",
            mixture_version=version,
            base_model="tiny-model",
            config={"max_steps": steps},
            pid=dead_pid(),
        )
        if status != "running":
            runs.update_run(cat, name, status=status, error=error, summary={"steps": steps})
    rows = [
        scores.ScoreRow(
            model=run,
            task=task,
            task_type=TASKS[task],
            split="test",
            subset="default",
            main_score=base + 0.03 * i,
            run=run,
        )
        for i, task in enumerate(RUN_TASKS)
        for run, base in (("run-a", 0.40), ("run-c", 0.42))
    ]
    scores.record_scores(cat, rows)
    scores.record_scores(cat, sampled_rows(("run-a", "run-c")))
    reference = SHARED_DATA / "reference_scores.csv"
    if reference.exists():
        scores.import_reference(cat, reference, TASKS.get)
    else:
        scores.record_scores(
            cat,
            [
                scores.ScoreRow(
                    model=model,
                    task=task,
                    task_type=task_type,
                    split="test",
                    subset="default",
                    main_score=0.5 + 0.04 * j,
                    is_reference=True,
                )
                for j, model in enumerate(REFERENCE_MODELS)
                for task, task_type in TASKS.items()
            ],
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, out: Path, timeout_s: float = 90) -> None:
    """Wait for the Streamlit server on `port` to answer its health check; a server that exits
    or stays silent fails the test with what it printed to `out`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the dashboard did not come up (exit {proc.poll()}):\n{out.read_text()}")
        time.sleep(0.3)


@pytest.fixture(scope="session")
def dashboard_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Built once; tests that write into a workspace take `fresh_ws` instead."""
    return build_workspace(tmp_path_factory.mktemp("dash") / "ws")


@pytest.fixture(scope="session")
def searched_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The trainer tests' sample workspace after a real, tiny `kalmix mix search` (4 trials,
    1 seed, STS-B only, in this process) that registered `found@v1`: for the Search page."""
    from kalmix.search import Runner, SearchConfig, search
    from tests.trainer.helpers import training_workspace

    if not SHARED_DATA.exists():
        pytest.skip(f"evaluation data not found at {SHARED_DATA}")
    ws, _ = training_workspace(tmp_path_factory.mktemp("search-page") / "ws")
    config = SearchConfig(
        where="not is_eval", budget=200, trials=4, seeds=1, tasks=("STSBenchmark",), batch_size=32
    )
    search(Catalog.open(ws), "found", config, runner=Runner("inline"))
    return ws


@pytest.fixture
def fresh_ws(dashboard_ws: Workspace, tmp_path: Path) -> Workspace:
    """A private copy of the built workspace (for tests that create mixtures or runs)."""
    shutil.copytree(dashboard_ws.root, tmp_path / "ws")
    return Workspace.load(tmp_path / "ws")


@pytest.fixture
def use_ws(monkeypatch: pytest.MonkeyPatch):
    """Point the app at a workspace, with cold caches (the app reads `KALMIX_HOME`)."""
    import streamlit as st

    def point(ws: Workspace) -> Workspace:
        monkeypatch.setenv("KALMIX_HOME", str(ws.root))
        st.cache_data.clear()
        return ws

    return point
