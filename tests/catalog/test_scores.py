"""Scores grouped by mixture: the seeds of an experiment, and the paired lift over a baseline."""

from __future__ import annotations

import json

import pytest

from catalog.runs import create_run
from catalog.scores import ScoreRow, lift_table, record_scores
from corpus.errors import KalmixError

# (run, mixture, seed, STS score, classification score)
RUNS = [
    ("raw-s0", "raw", 0, 0.50, 0.70),
    ("raw-s1", "raw", 1, 0.54, 0.72),
    ("cur-s0", "curated", 0, 0.53, 0.71),
    ("cur-s1", "curated", 1, 0.58, 0.72),
]


@pytest.fixture
def scored(cat):
    for name, mixture, seed, sts, cls in RUNS:
        create_run(
            cat,
            name,
            mixture=mixture,
            mixture_version=seed + 1,
            base_model="static",
            config={"seed": seed},
        )
        record_scores(
            cat,
            [
                ScoreRow(name, "STSBenchmark", "sts", "test", "default", sts, run=name),
                ScoreRow(
                    name,
                    "Banking77Classification",
                    "classification",
                    "test",
                    "default",
                    cls,
                    run=name,
                ),
            ],
        )
    return cat


def test_groups_by_mixture_name_and_pairs_the_lift_by_seed(scored):
    rows = {r["group"]: r for r in lift_table(scored, [r[0] for r in RUNS], baseline="raw")}
    assert set(rows) == {"raw", "curated", "curated - raw"}
    assert rows["raw"]["runs"] == 2
    assert rows["raw"]["mean_sts"] == pytest.approx(0.52)
    assert rows["raw"]["mean_sts_sd"] == pytest.approx(0.0283, abs=1e-4)
    lift = rows["curated - raw"]
    # paired differences of the overall mean: seed 0 +0.02, seed 1 +0.02
    assert lift["mean"] == pytest.approx(0.02)
    assert lift["mean_sd"] == pytest.approx(0.0, abs=1e-12)
    assert lift["mean_sts"] == pytest.approx(0.035)


def test_cli_by_mixture_with_patterns(scored, cli):
    out = cli(
        "eval", "compare", "--runs", "raw-*,cur-*", "--by-mixture", "--baseline", "raw", "--json"
    )
    assert out.exit_code == 0, out.output
    assert {r["group"] for r in json.loads(out.output)} == {"raw", "curated", "curated - raw"}
    table = cli("eval", "compare", "--runs", "*-s0,*-s1", "--by-mixture", "--baseline", "raw")
    assert "+0.0200 ± 0.0000" in table.output


def test_bad_grouping_input_is_one_clear_error(scored, cli):
    with pytest.raises(KalmixError, match="baseline mixture 'nope'"):
        lift_table(scored, ["raw-s0", "cur-s0"], baseline="nope")
    out = cli("eval", "compare", "--runs", "zzz-*", "--by-mixture")
    assert "matches no evaluated run" in str(out.exception)
    out = cli("eval", "compare", "--baseline", "raw")
    assert "--baseline goes with --by-mixture" in str(out.exception)
