"""The real app in a real browser: `streamlit run` headless, Chromium driven by Playwright.

Needs Debian's `chromium` (`apt-get install -y chromium`) and the `playwright` Python package
(`pip install playwright`; its own browser download, `playwright install`, is not used: the
test points Playwright at /usr/bin/chromium). Without them it is skipped, with the reason.

Screenshots of every page go to `$KALMIX_SCREENSHOTS` when set (the README's come from
`KALMIX_SCREENSHOTS=docs/screenshots pytest tests/dashboard/test_browser.py`), else to a
temporary folder, so a test run never rewrites tracked files.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard.cli import streamlit_command

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def playwright_api():
    """Playwright's sync API, or a skip saying what to install (checked before any start-up)."""
    api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    return api


@pytest.fixture
def server(playwright_api, dashboard_ws, tmp_path: Path):
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        streamlit_command(port, "127.0.0.1"),
        env={**os.environ, "KALMIX_HOME": str(dashboard_ws.root)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail("streamlit did not come up:\n" + (tmp_path / "streamlit.log").read_text())
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_every_page_renders_in_chromium(playwright_api, server, tmp_path):
    shots = Path(os.environ.get("KALMIX_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1800})
        page.set_default_timeout(TIMEOUT_MS)

        def open_page(title: str, ready: str) -> None:
            """Go to a page through the sidebar (the app stays loaded, as for a user)."""
            page.get_by_role("link", name=title, exact=True).click()
            page.get_by_role("heading", name=title, exact=True).wait_for()
            page.locator(ready).first.wait_for(state="visible")
            settle()

        def settle() -> None:
            """Wait until the script run has finished (the running indicator is gone)."""
            page.wait_for_function(
                '() => !document.querySelector(\'[data-testid="stStatusWidget"] svg, '
                '[data-testid="stAppRunningIndicator"]\')'
            )
            page.wait_for_timeout(300)

        def shoot(name: str) -> None:
            assert page.locator('[data-testid="stException"]').count() == 0
            page.mouse.move(0, 0)  # no hover toolbars in the picture
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        page.goto(server)
        page.get_by_role("heading", name="Catalog", exact=True).wait_for()
        page.locator(".js-plotly-plot").first.wait_for(state="visible")
        settle()
        assert page.get_by_text("faq-retrieval").count() >= 1
        shoot("catalog")

        open_page("Dataset", '[data-testid="stGraphVizChart"] svg')
        assert page.locator('[data-testid="stGraphVizChart"] svg g.node').count() == 3
        shoot("dataset")

        open_page("Mixtures", '[data-testid="stRadio"]')
        page.get_by_text("SQL WHERE", exact=True).click()
        where = page.get_by_role("textbox", name="WHERE over the datasets view")
        where.fill("task_type IN ('retrieval', 'sts', 'classification')")
        where.press("Enter")
        page.get_by_text("rows available").wait_for()
        page.locator(".js-plotly-plot").nth(2).wait_for(state="visible")
        settle()
        shoot("mixtures")

        open_page("Runs", ".js-plotly-plot")
        page.get_by_role("combobox", name="run", exact=True).click()
        page.get_by_role("option", name="run-a", exact=True).click()
        page.get_by_role("heading", name="run-a").wait_for()
        settle()
        shoot("runs")

        open_page("Compare", ".js-plotly-plot")
        shoot("compare")
        browser.close()
    assert {p.name for p in shots.glob("*.png")} >= {
        "catalog.png",
        "dataset.png",
        "mixtures.png",
        "runs.png",
        "compare.png",
    }
