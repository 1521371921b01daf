"""Every dashboard page through `streamlit.testing.v1.AppTest` on a real workspace."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from benchmarks.dashboard import WRITER
from catalog import mixtures, runs, scores
from catalog.db import Catalog
from corpus.errors import KalmixError
from dashboard import actions, auth
from tests.dashboard.conftest import APP, RUN_TASKS, SAMPLE_LIMIT, dead_pid

VIEWS = APP.parent / "views"
PAGES = (
    "views/catalog.py",
    "views/dataset.py",
    "views/mixtures.py",
    "views/runs.py",
    "views/compare.py",
    "views/search.py",
)


def render(page: str | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    if page:
        at.switch_page(page)
    at.query_params.update(query)
    return at.run()


def clean(at: AppTest) -> AppTest:
    """No traceback and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def frame(at: AppTest, column: str):
    """The first table on the page with this column (plain dataframes carry no key)."""
    for element in at.dataframe:
        if column in element.value.columns:
            return element.value
    raise AssertionError(f"no table with a {column!r} column")


def spec(at: AppTest, kind: str, index: int = 0) -> str:
    return at.get(kind)[index].proto.spec


def test_catalog_page_taxonomy_with_gaps_and_filtered_datasets(dashboard_ws, use_ws):
    use_ws(dashboard_ws)
    at = clean(render())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["datasets"] == "3" and metrics["versions"] == "5"
    assert metrics["categories with data"].startswith("3 / ")
    tree = spec(at, "plotly_chart")
    assert "treemap" in tree and "#bdbdbd" in tree and "faq-retrieval" in tree  # gaps in grey
    at.session_state["catalog_tab"] = "Datasets"
    clean(at.run())
    assert frame(at, "last_operation")["name"].tolist() == ["faq", "sts-sample", "support-intents"]
    at.text_input(key="ds_where").input("task_type = 'sts'").run()
    assert frame(at, "last_operation")["name"].tolist() == ["sts-sample"]
    at.text_input(key="ds_where").input("").run()
    at.multiselect(key="ds_languages").set_value(["fr"]).run()
    assert frame(at, "last_operation")["name"].tolist() == ["faq"]
    at.text_input(key="ds_where").input("no_such_column > 1").run()
    assert not at.exception and "bad WHERE clause" in texts(at.warning)


def test_dataset_page_lineage_distributions_and_removals(dashboard_ws, use_ws):
    use_ws(dashboard_ws)
    at = clean(render("views/dataset.py", name="faq"))
    assert at.subheader[0].value == "faq@v3"
    dot = spec(at, "graphviz_chart")
    assert '"faq@v1" -> "faq@v2"' in dot and "exact_dup 4" in dot and "too_short 7" in dot
    lineage = frame(at, "rows kept")
    assert lineage["rows kept"].tolist() == [120, 116, 109]
    assert lineage["rows removed"].tolist() == [0, 4, 7]
    charts = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert '"zh"' in charts and "text length" in charts  # languages and lengths
    examples = frame(at, "detail")
    assert set(examples["reason"]) == {"too_short"} and examples["positive"].notna().all()
    assert frame(at, "negatives").shape[0] == 20

    at.selectbox[1].select(2).run()  # version picker: v2, the dedup
    clean(at)
    examples = frame(at, "detail")
    assert set(examples["reason"]) == {"exact_dup"} and examples["query"].notna().all()
    at.selectbox[1].select(1).run()
    assert "removed no rows" in texts(clean(at).info)

    missing = render("views/dataset.py", name="faqq")
    assert not missing.exception and "unknown dataset 'faqq'" in texts(missing.error)


def test_mixture_builder_previews_creates_and_diffs(fresh_ws, use_ws):
    use_ws(fresh_ws)
    at = clean(render("views/mixtures.py"))
    assert "Choose datasets" in texts(at.info)
    at.session_state["mb_mode"] = "SQL WHERE"
    at.session_state["mb_where"] = "task_type = 'retrieval' OR task_type = 'sts'"
    at.session_state["mb_budget"] = 100
    at.session_state["mb_name"] = "mix-b"
    clean(at.run())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"datasets": "2", "rows": "100", "rows available": "189"}
    pies = [c.proto.spec for c in at.get("plotly_chart")]
    assert len(pies) == 3 and '"sts"' in pies[0]
    assert "kalmix mix create mix-b" in texts(at.code)
    at.button(key="mb_create").click().run()
    assert "mix-b@v1" in texts(clean(at).success)
    cat = Catalog.open(fresh_ws)
    made = mixtures.resolve_mixture(cat, "mix-b@v1")
    spec_ = {"where": "task_type = 'retrieval' OR task_type = 'sts'", "budget": 100}
    planned = mixtures.plan_mixture(cat, spec_)
    assert [(e.dataset, e.rows_taken) for e in made.entries] == [
        (e.dataset, e.rows_taken) for e in planned
    ]

    at.text_input(key="mb_where").input("no_such_column = 1").run()
    assert not at.exception and "bad WHERE clause" in texts(at.warning)

    at.session_state["mix_tab"] = "Versions"
    clean(at.run())
    assert at.selectbox(key="mv_ref").value == "mix-b@v1"  # newest first
    assert frame(at, "taken").shape[0] == 2
    at.session_state["mix_tab"] = "Diff"
    clean(at.run())
    at.selectbox(key="diff_a").select("mix-a@v1").run()
    at.selectbox(key="diff_b").select("mix-a@v2").run()
    diff = frame(clean(at), "change")
    assert set(diff["change"]) <= {"added", "removed", "changed"} and len(diff) >= 1


def test_runs_page_shows_status_curves_logs_and_stale_runs(dashboard_ws, use_ws):
    use_ws(dashboard_ws)
    at = clean(render("views/runs.py", run="run-a"))
    assert frame(at, "status").shape[0] == 4
    curves = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    assert "loss" in curves and "throughput" in curves and "learning rate" in curves
    assert "done" in texts(at.code)

    failed = render("views/runs.py", run="run-b")
    assert not failed.exception
    assert "loss became NaN" in texts(failed.error) and "Traceback" in texts(failed.code)

    stale = clean(render("views/runs.py", run="run-d"))
    assert "process" in texts(stale.warning) and "gone" in texts(stale.warning)


@contextlib.contextmanager
def live_run(ws):
    """A live process registered as the running run `run-live`; killed on leaving."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "run-live"])
    try:
        runs.create_run(
            Catalog.open(ws),
            "run-live",
            mixture="mix-a",
            mixture_version=1,
            base_model="tiny-model",
            pid=proc.pid,
        )
        yield proc
    finally:
        proc.kill()


def test_cancel_sends_sigterm_to_the_runs_process(fresh_ws, use_ws):
    use_ws(fresh_ws)
    with live_run(fresh_ws) as proc:
        at = clean(render("views/runs.py", run="run-live"))
        at.button(key="cancel_run-live").click().run()
        assert proc.wait(timeout=20) == -signal.SIGTERM
    with pytest.raises(Exception, match="no live process"):
        actions.cancel(dead_pid(), "run-live")


def test_launch_starts_a_kalmix_command_that_outlives_the_caller(fresh_ws):
    log = fresh_ws.runs_dir / "probe" / "stdout.log"
    pid = actions.launch(str(fresh_ws.root), ["catalog", "datasets", "--json"], log)
    assert os.getsid(pid) == pid  # its own session: a closed page or server leaves it running
    deadline = time.monotonic() + 60
    while actions.exit_code(pid) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert actions.exit_code(pid) == 0
    text = log.read_text()
    assert text.startswith("$ kalmix catalog datasets --json")
    assert '"support-intents"' in text


def test_compare_page_table_deltas_heat_map_and_radar(dashboard_ws, use_ws):
    use_ws(dashboard_ws)
    at = clean(render("views/compare.py"))
    table = frame(at, "kind")
    cat = Catalog.open(dashboard_ws)
    full = scores.compare_table(cat).to_pandas()
    sampled = scores.compare_table(cat, samples=True).to_pandas()
    assert len(table) == len(full) + len(sampled) and (table["kind"] == "reference").sum() >= 4
    run_a = next(i for i in table.index if i.startswith("run-a "))
    run_c = next(i for i in table.index if i.startswith("run-c "))
    assert run_a == "run-a (mix-a@v1)"
    at.selectbox(key="cmp_base").select(run_a).run()
    deltas = clean(at).dataframe[1].value
    assert deltas.loc[run_a].abs().max() == 0
    assert deltas.loc[run_c, "STSBenchmark"] == pytest.approx(2.0)
    kinds = [c.proto.spec for c in at.get("plotly_chart")]
    assert '"heatmap"' in kinds[0] and '"scatterpolar"' in kinds[1]

    at.multiselect(key="cmp_types").set_value(["sts"]).run()
    columns = frame(clean(at), "kind").columns
    assert "STSBenchmark" in columns and "SciFact" not in columns


def test_compare_page_shows_sampled_scores_apart_from_full_ones(dashboard_ws, use_ws):
    """run-a has full-split and sampled (`--limit 100`) scores: two labelled rows, each with
    means over its own scores only (the catalog's full and `samples=True` tables)."""
    use_ws(dashboard_ws)
    at = clean(render("views/compare.py"))
    table = frame(at, "scores")
    full = table.loc["run-a (mix-a@v1)"]
    sampled = table.loc["run-a (mix-a@v1) · sampled"]
    assert full["scores"] == "full split"
    assert sampled["scores"] == f"sampled ({SAMPLE_LIMIT} rows per split)"
    cat = Catalog.open(dashboard_ws)
    by_model = {
        mode: scores.compare_table(cat, samples=mode).to_pandas().set_index("model")
        for mode in (False, True)
    }
    for row, mode in ((full, False), (sampled, True)):
        expected = by_model[mode].loc["run-a"]
        assert row["mean"] == pytest.approx(expected["mean"] * 100)
        for task in RUN_TASKS:
            assert row[task] == pytest.approx(expected[task] * 100)
    assert sampled["mean"] != pytest.approx(full["mean"])
    assert "sampled" in texts(at.caption)
    # Reference models stay beside both kinds of rows, on the same task columns.
    assert (table["kind"] == "reference").sum() >= 4


def test_compare_page_after_the_demo_sampled_runs_beside_references(fresh_ws, use_ws):
    """What `make demo` leaves: runs evaluated only on samples, and the imported reference
    scores. The page shows both, not "No scores yet"."""
    with Catalog.open(fresh_ws).write() as con:
        con.execute(
            f"DELETE FROM scores WHERE NOT is_reference "
            f"AND split NOT LIKE '%{scores.SAMPLE_SPLIT_MARK}%'"
        )
    use_ws(fresh_ws)
    at = clean(render("views/compare.py"))
    assert "No scores yet" not in texts(at.info)
    table = frame(at, "scores")
    runs_ = table[table["kind"] == "run"]
    assert sorted(runs_.index) == ["run-a (mix-a@v1) · sampled", "run-c (mix-a@v2) · sampled"]
    references = table[table["kind"] == "reference"]
    assert len(references) >= 4 and set(references["scores"]) == {"full split"}
    assert references["STSBenchmark"].notna().all()  # the references' scores on run tasks
    assert runs_["mean"].notna().all()


def test_every_page_has_an_empty_state_on_a_new_workspace(ws, use_ws):
    use_ws(ws)
    at = render()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
        assert at.info, f"{page} shows no guidance on an empty workspace"


def test_app_explains_a_folder_that_is_not_a_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("KALMIX_HOME", str(tmp_path))
    at = render()
    assert not at.exception and "kalmix init" in texts(at.error)


def test_pages_render_while_another_process_writes_the_catalog(fresh_ws, use_ws):
    """An ingest-like writer commits a version and updates a run every ~20 ms while every
    page renders with cold caches: reads wait for the short write transactions."""
    use_ws(fresh_ws)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(fresh_ws.root), "run-d", "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout.readline().strip() == "1"  # the writer is committing
        at = render()
        for page in PAGES:
            use_ws(fresh_ws)  # cold caches: every page reads the catalog while it is written
            clean(at.switch_page(page).run())
        assert writer.poll() is None, writer.stderr.read()
    finally:
        writer.terminate()
        out, _ = writer.communicate(timeout=30)
    assert len(out.split()) >= 5  # it kept committing while the pages rendered


def test_dashboard_command_refuses_a_busy_port(dashboard_ws, cli):
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("--workspace", str(dashboard_ws.root), "dashboard", "--port", str(port))
    assert result.exit_code != 0 and "in use" in str(result.exception)
    assert "Example: kalmix dashboard" in cli("dashboard", "--help").output


def test_metrics_reader_skips_a_half_written_line(tmp_path):
    from dashboard import data

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    table = data.metrics(str(path), path.stat().st_size)
    assert table.column("step").to_pylist() == [1]


@pytest.mark.parametrize("page", PAGES)
def test_each_page_works_as_the_first_script_of_a_session(page, dashboard_ws, use_ws):
    """A page run before (or without) app.py, as a deep link's first request was: it finds
    the workspace itself instead of failing on a session_state key app.py sets."""
    use_ws(dashboard_ws)
    at = AppTest.from_file(str(APP.parent / page), default_timeout=60)
    clean(at.run())
    assert at.title and at.title[0].value != "kalmix"


def test_no_pages_folder_beside_the_app():
    """Streamlit auto-discovers `pages/` beside the main script: its raw file names would be
    listed in the sidebar and its scripts routed by URL without app.py."""
    assert not (APP.parent / "pages").exists() and VIEWS.is_dir()


TOKEN = "s3cret-token"


def test_without_the_token_a_session_creates_no_mixture(fresh_ws, use_ws, monkeypatch):
    use_ws(fresh_ws)
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    at = clean(render("views/mixtures.py"))
    assert "Read-only" in texts(at.sidebar.caption)
    at.session_state["mb_mode"] = "SQL WHERE"
    at.session_state["mb_where"] = "task_type = 'sts'"
    at.session_state["mb_name"] = "mix-b"
    at.run()
    at.button(key="mb_create").click().run()
    assert not at.exception and not at.success
    assert "Creating a mixture is refused" in texts(at.error) and "token" in texts(at.error)
    refs = Catalog.open(fresh_ws).query("SELECT mixture FROM mixture_versions").to_pylist()
    assert {r["mixture"] for r in refs} == {"mix-a"}

    # A wrong token in the sidebar is said to be wrong; the right one unlocks the session.
    at.sidebar.text_input(key=auth.ENTRY_KEY).input("nope").run()
    assert "not this dashboard's token" in texts(at.sidebar.error)
    at.sidebar.text_input(key=auth.ENTRY_KEY).input(TOKEN).run()
    at.button(key="mb_create").click().run()
    assert "mix-b@v1" in texts(clean(at).success)
    assert at.query_params["token"] == TOKEN  # kept in the URL: a reload stays signed in


def test_the_token_in_the_url_lets_a_session_start_processes(fresh_ws, use_ws, monkeypatch):
    use_ws(fresh_ws)
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["token"] = TOKEN
    at.run()
    at.switch_page("views/mixtures.py")
    at.session_state["mb_mode"] = "SQL WHERE"
    at.session_state["mb_where"] = "task_type = 'sts'"
    at.session_state["mb_name"] = "mix-c"
    at.run()
    at.button(key="mb_create").click().run()
    assert "mix-c@v1" in texts(clean(at).success)
    assert not at.sidebar.text_input  # no token box once presented


def test_without_the_token_nothing_is_started_or_signalled(fresh_ws, use_ws, monkeypatch):
    use_ws(fresh_ws)
    monkeypatch.setenv(auth.TOKEN_ENV, TOKEN)
    with live_run(fresh_ws) as proc:
        at = clean(render("views/runs.py", run="run-live"))
        at.button(key="cancel_run-live").click().run()
        assert "Cancelling run run-live is refused" in texts(at.error)
        assert proc.poll() is None  # not signalled
    # The actions refuse too, whichever page (or a page that forgets to check) calls them.
    log = fresh_ws.runs_dir / "probe" / "stdout.log"
    for call in (
        lambda: actions.launch(str(fresh_ws.root), ["catalog", "datasets"], log),
        lambda: actions.run(str(fresh_ws.root), ["mix", "create", "x", "--where", "true"]),
        lambda: actions.cancel(proc.pid, "run-live"),
    ):
        with pytest.raises(KalmixError, match="refused.*token"):
            call()
    assert not log.exists()


def test_loopback_addresses():
    assert auth.is_loopback("localhost") and auth.is_loopback("127.0.0.1")
    assert auth.is_loopback("::1") and auth.is_loopback("127.0.1.1")
    for host in ("0.0.0.0", "::", "", "192.168.1.20", "no-such-host.invalid"):
        assert not auth.is_loopback(host), host
