"""The Search page on a workspace with a real search (conftest's `searched_ws`), then with its
attribution stored; and its button that starts a search."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from catalog.db import Catalog
from catalog.workspace import Workspace
from dashboard import auth
from kalmix.attribution import AttributionConfig, attribute
from kalmix.search import Runner
from tests.conftest import SHARED_DATA
from tests.dashboard.test_pages import clean, render, texts

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"evaluation data not found at {SHARED_DATA}"
)


def test_search_page_shows_trials_weights_and_effects(searched_ws, use_ws, tmp_path):
    ws = use_ws(Workspace.load(shutil.copytree(searched_ws.root, tmp_path / "ws")))
    at = clean(render("views/search.py"))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["trials"] == "4 x 1 seeds" and "cross-validated R²" in metrics
    assert any(label.startswith("proposed - ") for label in metrics)
    scatter, bars = (c.proto.spec for c in at.get("plotly_chart"))
    assert '"predicted"' in scatter and "dirichlet" in scatter and "proportional" in scatter
    assert '"proposed"' in bars and '"uniform"' in bars and '"intents"' in bars
    assert "kalmix mix attribute found@v1" in texts(at.info)

    cat = Catalog.open(ws)
    for by in ("dataset", "category"):
        attribute(cat, "found@v1", AttributionConfig(by=by), runner=Runner("inline"))
    use_ws(ws)  # cold caches
    at = clean(render("views/search.py"))
    charts = [c.proto.spec for c in at.get("plotly_chart")]
    assert len(charts) == 3 and "mean_sts" in charts[2] and "regression" in charts[2]
    assert '"faq"' in charts[2]
    at.radio(key="search_by").set_value("category").run()
    assert "faq-retrieval" in clean(at).get("plotly_chart")[2].proto.spec


def test_the_start_button_launches_kalmix_mix_search(searched_ws, use_ws, tmp_path, monkeypatch):
    ws = use_ws(Workspace.load(shutil.copytree(searched_ws.root, tmp_path / "ws")))
    monkeypatch.setenv(auth.TOKEN_ENV, "secret-token")
    at = clean(render("views/search.py"))
    at.session_state["search_name"] = "bg"
    at.session_state["search_budget"] = 200
    at.run()
    at.button(key="search_start").click().run()
    assert "Starting kalmix mix search is refused" in texts(at.error)
    log = ws.root / "searches" / "bg" / "launch.log"
    assert not log.exists()

    at.sidebar.text_input(key=auth.ENTRY_KEY).input("secret-token").run()
    at.button(key="search_start").click().run()
    assert "started `kalmix mix search bg --where 'not is_eval'" in texts(clean(at).success)
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    while "error:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    # the whole suite at the default batch of 512 on 200 rows: the first trial says why
    assert "$ kalmix mix search bg" in log.read_text()
    said = " ".join(log.read_text().split())  # rich wraps the error line at 160 columns
    assert re.search(r"trial t0\d-seed\d failed: batch size 512 ", said), said
