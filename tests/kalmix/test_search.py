"""`kalmix mix search`: trials on the sample datasets, a killed search resumed, bad input.

Real proxies on real data: the three hand-written sample datasets, a 200-row budget, one seed,
two cheap tasks of the local suite (STS-B and SNIPS classification, full splits), in this
process (`--executor inline`), so a whole search takes about half a minute.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catalog import runs
from catalog.db import Catalog
from catalog.mixtures import list_mixtures, resolve_mixture
from catalog.workspace import Workspace
from corpus.errors import KalmixError
from tests.conftest import SHARED_DATA
from tests.trainer.helpers import training_workspace

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"evaluation data not found at {SHARED_DATA}"
)
REPO = Path(__file__).resolve().parents[2]
SEARCH = [
    "--where", "not is_eval", "--trials", "4", "--budget", "200", "--seeds", "1",
    "--tasks", "STSBenchmark,KalmixSNIPSClassification", "--batch-size", "32",
    "--executor", "inline",
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    ws, _ = training_workspace(tmp_path_factory.mktemp("search") / "ws")
    return ws


def cli(ws: Workspace, *args: str):
    from typer.testing import CliRunner

    from kalmix.cli import app

    return CliRunner().invoke(app, ["--workspace", str(ws.root), *args])


def with_option(option: str, value: str) -> list[str]:
    """SEARCH with `option` set to `value` (replaced, or added)."""
    args = list(SEARCH)
    if option in args:
        args[args.index(option) + 1] = value
        return args
    return [*args, option, value]


def finished(cat: Catalog, prefix: str) -> dict[str, object]:
    return {
        r["name"]: r["finished_at"]
        for r in cat.query(
            "SELECT name, finished_at FROM runs WHERE name LIKE ? AND status = 'completed'",
            [f"{prefix}%"],
        ).to_pylist()
    }


def test_a_killed_search_resumes_and_registers_its_record(workspace):
    jobs = workspace.root / "searches" / "found" / "s1" / "jobs"
    command = [sys.executable, "-m", "kalmix", "--workspace", str(workspace.root), "mix", "search"]
    proc = subprocess.Popen(
        [*command, "found", *SEARCH],
        cwd=REPO,
        env={**os.environ, "KALMIX_HOME": str(workspace.root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while len(list(jobs.glob("*.json"))) < 2 and proc.poll() is None:
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    cat = Catalog.open(workspace)
    done_before = {p.stem for p in jobs.glob("*.json")}
    assert len(done_before) >= 2, "the search died before two jobs finished"
    assert "found" not in list_mixtures(cat).column("name").to_pylist()
    before = finished(cat, "found-s1-")

    result = cli(workspace, "mix", "search", "found", *SEARCH)
    assert result.exit_code == 0, result.output
    assert f"({len(done_before)} jobs reused)" in result.output
    after = finished(cat, "found-s1-")
    for key in done_before:  # a finished trial is read back, not trained again
        run = json.loads((jobs / f"{key}.json").read_text())["run"]
        assert after[run] == before[run]
    assert len(after) == 6  # 4 trials x 1 seed, then the proposal and the best baseline

    mv = resolve_mixture(cat, "found@v1")
    record = mv.spec["search"]
    assert mv.spec["weighting"] == "explicit" and mv.rows == 200
    assert [t["kind"] for t in record["trials"]] == [
        "proportional", "uniform", "temperature", "dirichlet",
    ]  # fmt: skip
    assert all(len(t["scores"]) == 1 and t["objective"] > 0 for t in record["trials"])
    assert set(record["model"]["coef"]) == {"faq", "intents", "sts"}
    assert record["model"]["model"] == "ridge" and "cv_r2" in record["model"]
    assert abs(sum(record["proposed"].values()) - 1) < 1e-4
    assert record["validation"]["seeds"] == [1000]
    assert record["validation"]["baseline"] == record["best_baseline"]["kind"]
    assert record["validation"]["diff_mean"] is not None
    shown = cli(workspace, "mix", "show", "found@v1")
    assert "searched: 4 trials x 1 seeds" in shown.output
    assert "cross-validated R²" in shown.output and "validated on fresh seeds 1000" in shown.output
    assert runs.get_run(cat, "found-s1-proposed-seed1000").mixture == "found-trials"


@pytest.mark.parametrize(
    ("name", "option", "value", "match"),
    [
        ("one", "--where", "name = 'faq'", "selects 1 dataset .*a search needs at least 2"),
        ("few", "--trials", "3", "--trials must be at least 4"),
        (
            "task",
            "--objective",
            "STSBenchmarc",
            "unknown --objective .*known: mean, .*STSBenchmark",
        ),
        (
            "fail",
            "--batch-size",
            "100000",
            "t00-seed0 failed: batch size 100000 .*nothing registered",
        ),
    ],
)
def test_bad_input_is_one_line_and_registers_nothing(workspace, name, option, value, match):
    result = cli(workspace, "mix", "search", name, *with_option(option, value))
    assert result.exit_code != 0 and isinstance(result.exception, KalmixError)
    assert "\n" not in str(result.exception)
    assert re.search(match, str(result.exception)), result.exception
    assert name not in list_mixtures(Catalog.open(workspace)).column("name").to_pylist()


def test_an_unfinished_search_refuses_other_settings(workspace):
    cat = Catalog.open(workspace)
    cli(
        workspace, "mix", "search", "other", *with_option("--batch-size", "100000")
    )  # fails on its first trial: unfinished
    result = cli(workspace, "mix", "search", "other", *SEARCH)
    assert isinstance(result.exception, KalmixError)
    assert "has other settings (batch_size=100000)" in str(result.exception)
    assert "other" not in list_mixtures(cat).column("name").to_pylist()


@pytest.fixture
def found(workspace) -> str:
    """`found@v1`, the searched mixture (registered by the resume test, or here when alone)."""
    if "found" not in list_mixtures(Catalog.open(workspace)).column("name").to_pylist():
        assert cli(workspace, "mix", "search", "found", *SEARCH).exit_code == 0
    return "found@v1"


def stored(cat: Catalog, mixture: str, unit_kind: str) -> list[dict]:
    return cat.query(
        "SELECT method, unit, metric, effect, sd, n FROM attributions"
        " WHERE mixture = ? AND unit_kind = ? ORDER BY unit, metric",
        [mixture, unit_kind],
    ).to_pylist()


def test_attribution_of_a_searched_mixture_comes_from_its_regression(workspace, found):
    result = cli(workspace, "mix", "attribute", found, "--by", "category", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["method"] == "regression" and "predicted by the ridge regression" in out["note"]
    categories = {"faq-retrieval", "customer-support-intent", "general-sts"}
    assert {e["unit"] for e in out["effects"]} == categories
    metrics = {e["metric"] for e in out["effects"]}
    assert metrics == {"mean", "mean_classification", "mean_sts"}
    rows = stored(Catalog.open(workspace), "found", "category")
    assert len(rows) == 9 and all(r["method"] == "regression" and r["n"] == 4 for r in rows)
    table = cli(workspace, "mix", "attribute", found)
    assert "(regression): predicted by" in table.output and "intents" in table.output


def test_leave_one_out_measures_each_dataset_and_reuses_its_runs(workspace):
    cat = Catalog.open(workspace)
    if "small" not in list_mixtures(cat).column("name").to_pylist():
        made = cli(workspace, "mix", "create", "small", "-d", "faq", "-d", "intents", "-d", "sts",
                   "--budget", "200")  # fmt: skip
        assert made.exit_code == 0, made.output
    options = [*SEARCH[SEARCH.index("--seeds") :]]  # the proxy options of the search
    result = cli(workspace, "mix", "attribute", "small@v1", "--json", *options)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["method"] == "leave-one-out" and "measured by leave-one-out" in out["note"]
    assert {e["unit"] for e in out["effects"]} == {"faq", "intents", "sts"}
    assert all(e["n"] == 1 and e["sd"] is None for e in out["effects"])
    before = finished(cat, "small-v1-")
    assert set(before) == {f"small-v1-{u}-seed0" for u in ("full", "without-faq",
                                                           "without-intents", "without-sts")}  # fmt: skip
    again = json.loads(cli(workspace, "mix", "attribute", "small@v1", "--json", *options).output)
    assert again["effects"] == out["effects"] and finished(cat, "small-v1-") == before
    assert len(stored(cat, "small", "dataset")) == len(out["effects"])  # replaced, not added


def test_attribution_refuses_what_it_cannot_attribute(workspace):
    cat = Catalog.open(workspace)
    if "one" not in list_mixtures(cat).column("name").to_pylist():
        assert cli(workspace, "mix", "create", "one", "-d", "faq").exit_code == 0
    single = cli(workspace, "mix", "attribute", "one@v1")
    assert "has one dataset (faq)" in str(single.exception)
    wrong = cli(
        workspace, "mix", "attribute", "one@v1", "--by", "category", "--method", "regression"
    )
    assert "has one category" in str(wrong.exception)
    no_search = cli(workspace, "mix", "attribute", "mix@v1", "--method", "regression")
    assert "was not made by kalmix mix search" in str(no_search.exception)
