"""The real app in a real browser: `streamlit run` headless, Chromium driven by Playwright.

Needs Debian's `chromium` (`apt-get install -y chromium fonts-noto-cjk`; `.ci/run` installs
them when run as root) and the `playwright` Python package (its own browser download,
`playwright install`, is not used: the tests point Playwright at /usr/bin/chromium). Without
them the tests are skipped, with the reason, except under `CI=true`, where they fail: CI must
drive the dashboard.

Every test gets a fresh server. Screenshots of every page go to `$KALMIX_SCREENSHOTS` when set
(the README's come from `KALMIX_SCREENSHOTS=docs/screenshots pytest
tests/dashboard/test_browser.py`), else to a temporary folder, so a test run never rewrites
tracked files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from catalog.db import Catalog
from catalog.workspace import Workspace
from dashboard.server import streamlit_command
from kalmix.attribution import AttributionConfig, attribute
from kalmix.search import Runner
from tests.dashboard.conftest import free_port, wait_healthy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000
# The app's own navigation, in order; nothing else may be listed (no auto-discovered files).
NAV = ["Catalog", "Dataset", "Mixtures", "Runs", "Compare", "Search"]
# Each page's URL path and what shows that it rendered.
PAGES = {
    "Catalog": ("", ".js-plotly-plot"),
    "Dataset": ("dataset", '[data-testid="stGraphVizChart"] svg'),
    "Mixtures": ("mixtures", '[data-testid="stRadio"]'),
    "Runs": ("runs", ".js-plotly-plot"),
    "Compare": ("compare", ".js-plotly-plot"),
    "Search": ("search", '[data-testid="stExpander"]'),
}


def _missing(reason: str) -> None:
    """Skip, or fail under CI=true (where the browser must be there)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {reason}: .ci/run installs it when run as root")
    pytest.skip(reason)


@pytest.fixture
def playwright_api():
    """Playwright's sync API, or a skip saying what to install (checked before any start-up)."""
    try:
        import playwright.sync_api as api
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        _missing("Debian chromium is not installed (apt-get install -y chromium fonts-noto-cjk)")
    return api


def enter(where, role: str, name: str, value: str) -> None:
    """Type `value` into the input called `name` and press Enter, as Streamlit wants."""
    field = where.get_by_role(role, name=name)
    field.fill(value)
    field.press("Enter")


def start_server(root: Path, tmp_path: Path):
    """`streamlit run` on the workspace, as `kalmix dashboard` starts it; yields its URL."""
    port = free_port()
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        streamlit_command(port, "127.0.0.1"),
        env={**os.environ, "KALMIX_HOME": str(root)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(port, proc, tmp_path / "streamlit.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def server(playwright_api, dashboard_ws, tmp_path: Path):
    """A fresh server on the shared (read-only) workspace."""
    yield from start_server(dashboard_ws.root, tmp_path)


@pytest.fixture
def writable_server(playwright_api, fresh_ws, tmp_path: Path):
    """A fresh server on a private copy of the workspace (tests that create things)."""
    yield from start_server(fresh_ws.root, tmp_path)


@pytest.fixture
def browser(playwright_api):
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_page(browser, width: int = 1440, height: int = 1800):
    """A page in a new browser context: a new Streamlit session, no cookies or storage."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def settle(page) -> None:
    """Wait until the script run has finished (the running indicator is gone)."""
    page.wait_for_function(
        '() => !document.querySelector(\'[data-testid="stStatusWidget"] svg, '
        '[data-testid="stAppRunningIndicator"]\')'
    )
    page.wait_for_timeout(300)


def no_exception(page) -> None:
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, shown.first.inner_text()


def nav_titles(page) -> list[str]:
    links = page.locator('[data-testid="stSidebarNav"] a')
    return [t.strip().splitlines()[-1] for t in links.all_inner_texts()]


def test_every_page_works_as_the_first_request(browser, server):
    """Deep links: on a fresh server the first request is /mixtures, then every page is
    opened by its URL in a new browser session; each renders with only the app's own
    navigation in the sidebar."""
    order = ["Mixtures"] + [t for t in NAV if t != "Mixtures"]
    for title in order:
        path, ready = PAGES[title]
        page = new_page(browser)
        page.goto(f"{server}/{path}")
        page.get_by_role("heading", name=title, exact=True).wait_for()
        page.locator(ready).first.wait_for(state="visible")
        settle(page)
        no_exception(page)
        assert nav_titles(page) == NAV, title
        page.context.close()


def test_every_page_renders_in_chromium(browser, server, tmp_path):
    """A user's walk through the sidebar, with a screenshot of every page."""
    shots = Path(os.environ.get("KALMIX_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = new_page(browser)

    def open_page(title: str) -> None:
        """Go to a page through the sidebar (the app stays loaded, as for a user)."""
        page.get_by_role("link", name=title, exact=True).click()
        page.get_by_role("heading", name=title, exact=True).wait_for()
        page.locator(PAGES[title][1]).first.wait_for(state="visible")
        settle(page)

    def shoot(name: str) -> None:
        no_exception(page)
        page.mouse.move(0, 0)  # no hover toolbars in the picture
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    page.goto(server)
    page.get_by_role("heading", name="Catalog", exact=True).wait_for()
    page.locator(".js-plotly-plot").first.wait_for(state="visible")
    settle(page)
    assert page.get_by_text("faq-retrieval").count() >= 1
    shoot("catalog")

    open_page("Dataset")
    assert page.locator('[data-testid="stGraphVizChart"] svg g.node').count() == 3
    shoot("dataset")

    open_page("Mixtures")
    page.get_by_text("SQL WHERE", exact=True).click()
    enter(
        page,
        "textbox",
        "WHERE over the datasets view",
        "task_type IN ('retrieval', 'sts', 'classification')",
    )
    page.get_by_text("rows available").wait_for()
    page.locator(".js-plotly-plot").nth(2).wait_for(state="visible")
    settle(page)
    shoot("mixtures")

    open_page("Runs")
    page.get_by_role("combobox", name="run", exact=True).click()
    page.get_by_role("option", name="run-a", exact=True).click()
    page.get_by_role("heading", name="run-a").wait_for()
    settle(page)
    shoot("runs")

    open_page("Compare")
    assert page.get_by_text("sampled (100 rows per split)").count() >= 1
    shoot("compare")
    assert {p.name for p in shots.glob("*.png")} >= {
        "catalog.png",
        "dataset.png",
        "mixtures.png",
        "runs.png",
        "compare.png",
    }


def test_create_a_mixture_from_the_mixtures_page(browser, writable_server, fresh_ws):
    page = new_page(browser)
    page.goto(f"{writable_server}/mixtures")
    page.get_by_role("heading", name="Mixtures", exact=True).wait_for()
    page.get_by_text("SQL WHERE", exact=True).click()
    enter(page, "textbox", "WHERE over the datasets view", "task_type = 'sts'")
    page.get_by_text("rows available").wait_for()
    enter(page, "textbox", "mixture name (an existing name gets its next version)", "mix-browser")
    page.get_by_text("kalmix mix create mix-browser").first.wait_for()
    settle(page)
    page.get_by_role("button", name="Create", exact=True).click()
    page.get_by_text("mix-browser@v1").first.wait_for()
    settle(page)
    no_exception(page)

    page.get_by_role("tab", name="Versions").click()
    picker = page.get_by_role("combobox", name="mixture version")
    picker.wait_for()
    settle(page)
    # Newest first: the new version is the one shown, with its manifest.
    assert picker.input_value() == "mix-browser@v1"
    no_exception(page)
    refs = Catalog.open(fresh_ws).query("SELECT mixture, version FROM mixture_versions").to_pylist()
    assert {"mixture": "mix-browser", "version": 1} in refs


def test_start_a_training_run_from_the_runs_page(browser, writable_server, fresh_ws):
    """A tiny real `kalmix train` (3 steps of MiniLM on 200 rows) started from the page: it
    appears, is selected and its loss curve is drawn, without reloading the page."""
    page = new_page(browser)
    page.goto(f"{writable_server}/runs")
    page.get_by_role("heading", name="Runs", exact=True).wait_for()
    settle(page)
    page.get_by_role("button", name="Start training").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("textbox", name="run name").wait_for()
    enter(dialog, "textbox", "run name", "browser-run")
    enter(dialog, "spinbutton", "max steps (0: by epochs)", "3")
    enter(dialog, "spinbutton", "batch size (0: default 64)", "8")
    enter(
        dialog, "textbox", "more options, as on the command line", "--max-length 32 --negatives 1"
    )
    dialog.get_by_text("--max-steps 3").first.wait_for()
    settle(page)
    dialog.get_by_role("button", name="Start kalmix train").click()
    page.get_by_role("heading", name="browser-run").wait_for(timeout=180_000)
    # The caption under the curves names one of the new run's 3 steps (the workspace's other runs
    # have 12 or 40): waiting for the plot alone can match the previous run's curve, still on
    # screen while the page re-renders, before the new run has written a step.
    page.get_by_text(re.compile(r"^step [1-3]: ")).wait_for(timeout=180_000)
    curve = page.locator(".js-plotly-plot", has_text="loss").first
    curve.wait_for(state="visible", timeout=180_000)
    no_exception(page)
    log = fresh_ws.runs_dir / "browser-run" / "stdout.log"
    assert log.read_text().startswith("$ kalmix train mix-a@v2 --out-run browser-run")
    metrics = (fresh_ws.runs_dir / "browser-run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 1


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and chromium is missing"):
        _missing("chromium is missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is missing"):
        _missing("chromium is missing")


def test_search_page_and_start_a_search(browser, playwright_api, searched_ws, tmp_path):
    """The Search page of a searched workspace (screenshot), then its button starts a real
    `kalmix mix search` in the background, one that stops on its first trial (200 rows are
    fewer than the proxy's default batch)."""
    shots = Path(os.environ.get("KALMIX_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    root = Path(shutil.copytree(searched_ws.root, tmp_path / "ws"))
    cat = Catalog.open(Workspace.load(root))
    attribute(cat, "found@v1", AttributionConfig(), runner=Runner("inline"))  # the regression's
    url = start_server(root, tmp_path)
    page = new_page(browser)
    page.goto(f"{next(url)}/search")
    page.get_by_role("heading", name="Search", exact=True).wait_for()
    page.locator(".js-plotly-plot").nth(2).wait_for(state="visible")
    settle(page)
    assert page.get_by_text("cross-validated R²").count() >= 1
    no_exception(page)
    page.mouse.move(0, 0)
    page.screenshot(path=str(shots / "search.png"), full_page=True)

    page.get_by_text("Start a search").click()
    enter(page, "textbox", "mixture name", "bg")
    enter(page, "spinbutton", "budget (rows)", "200")
    page.get_by_text("--budget 200").first.wait_for()
    settle(page)
    page.get_by_role("button", name="Start search").click()
    page.get_by_text(re.compile(r"\(pid \d+\); log: ")).wait_for()
    log = root / "searches" / "bg" / "launch.log"
    for _ in range(600):  # at most 5 minutes: a guard against a hang
        if log.exists() and "error:" in log.read_text():
            break
        page.wait_for_timeout(500)
    said = " ".join(log.read_text().split())  # rich wraps the error line at 160 columns
    assert re.search(r"trial t0\d-seed\d failed: batch size 512 ", said), said
    page.context.close()
    url.close()
