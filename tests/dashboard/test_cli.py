"""`kalmix dashboard` as a user starts it: a real Streamlit server in a subprocess.

It must never prompt (Streamlit's first-run e-mail question) and must work with stdin closed
and a HOME that has never seen Streamlit; on a non-loopback address it prints a token.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dashboard import auth
from dashboard import server as dashboard_server
from tests.dashboard.conftest import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, ws_root: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """`kalmix dashboard` with stdin closed, a fresh HOME, no display and a $BROWSER that
    records what it was asked to open; returns (process, its output file, the record)."""
    home = tmp_path / "home"
    home.mkdir()
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$@" >> {opened}\n')
    browser.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "KALMIX_HOME", auth.TOKEN_ENV)
    }
    env.update(HOME=str(home), BROWSER=str(browser), PYTHONPATH=str(ROOT), COLUMNS="200")
    out = tmp_path / "out.txt"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kalmix", "--workspace", str(ws_root), "dashboard", *args],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    return proc, out, opened


def _stop(proc: subprocess.Popen) -> int:
    """Ctrl-C, as a user stops it; the server goes down with it."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_dashboard_never_prompts_with_stdin_closed_and_a_fresh_home(dashboard_ws, tmp_path):
    port = free_port()
    proc, out, opened = _start(tmp_path, dashboard_ws.root, "--port", str(port))
    try:
        wait_healthy(port, proc, out)
        deadline = time.monotonic() + 30
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        # kalmix opened the browser itself (Streamlit runs headless), once the server was up.
        assert opened.read_text().split() == [f"http://localhost:{port}"]
    finally:
        code = _stop(proc)
    text = out.read_text()
    assert "Email" not in text and "Welcome to Streamlit" not in text
    assert "You can now view" not in text  # Streamlit's banner: addresses without a token
    assert f"kalmix dashboard on http://localhost:{port} for workspace" in text
    assert code == 0, text
    assert not (tmp_path / "home" / ".streamlit" / "credentials.toml").exists()


def test_dashboard_on_a_public_address_prints_a_token(dashboard_ws, tmp_path):
    port = free_port()
    proc, out, opened = _start(
        tmp_path, dashboard_ws.root, "--host", "0.0.0.0", "--port", str(port), "--no-browser"
    )
    try:
        wait_healthy(port, proc, out)
    finally:
        code = _stop(proc)
    text = out.read_text()
    found = re.search(rf"kalmix dashboard on http://(\S+):{port}/\?token=([\w-]+) ", text)
    assert found, text
    assert found.group(1) == socket.gethostname() and len(found.group(2)) >= 32
    assert "need the token" in text
    assert not opened.exists()  # --no-browser
    assert code == 0, text


def test_dashboard_hands_the_token_to_the_app_only_off_loopback(dashboard_ws, cli, monkeypatch):
    """What the command passes to `streamlit run`: always headless; the token in the app's
    environment when the host is not loopback or --token is given, and never otherwise."""
    started: list[dict] = []

    class Server:
        def __init__(self, args, env, stdin, **_):
            started.append({"args": args, "env": env, "stdin": stdin})
            self.stdout = io.StringIO("")

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(dashboard_server.subprocess, "Popen", Server)
    monkeypatch.setattr(dashboard_server, "can_open_browser", lambda: False)
    monkeypatch.setenv(auth.TOKEN_ENV, "")
    ws = str(dashboard_ws.root)
    port = str(free_port())
    for args in (
        [],
        ["--host", "0.0.0.0"],
        ["--host", "0.0.0.0", "--token", "mine"],
        ["--token", "mine"],
    ):
        result = cli("--workspace", ws, "dashboard", "--port", port, *args)
        assert result.exit_code == 0, result.output
    plain, generated, given, loopback_given = started
    for run in started:
        args = run["args"]
        assert args[args.index("--server.headless") + 1] == "true"
        assert run["stdin"] == subprocess.DEVNULL
    assert auth.TOKEN_ENV not in plain["env"]
    assert len(generated["env"][auth.TOKEN_ENV]) >= 32
    assert given["env"][auth.TOKEN_ENV] == "mine" == loopback_given["env"][auth.TOKEN_ENV]
    empty = cli("--workspace", ws, "dashboard", "--port", port, "--token", " ")
    assert empty.exit_code != 0 and "must not be empty" in str(empty.exception)
