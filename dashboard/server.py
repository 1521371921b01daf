"""Start the Streamlit app on a workspace: what `kalmix dashboard` runs.

`serve` upgrades the catalog schema (a short write) before the app starts, because the
app itself only ever reads. Streamlit is started as `python -m streamlit run dashboard/app.py`
with the workspace in `KALMIX_HOME`; it is imported only there, so `kalmix --help` stays fast.

Streamlit always runs headless: otherwise its first start on a machine asks for an e-mail
address on the terminal (and exits 255 where stdin is not a terminal). kalmix opens the
browser itself once the server answers its health check, unless `--no-browser`, and only
where a browser can be shown (a display, macOS, Windows, or `$BROWSER`).

On an address other than loopback the dashboard requires a token (`dashboard.auth`): one is
generated (or taken from `--token` / `$KALMIX_DASHBOARD_TOKEN`) and printed in the address,
as Jupyter does; a browser session that has not presented it starts no processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from catalog.db import Catalog
from catalog.workspace import Workspace
from corpus.console import console
from corpus.errors import KalmixError
from dashboard.auth import TOKEN_ENV, is_loopback

APP = Path(__file__).resolve().parent / "app.py"
# Streamlit's own start-up banner gives addresses without the token (and its network guess);
# kalmix prints the one address to open instead, so these lines are not passed on.
BANNER = (
    "You can now view your Streamlit app",
    "URL: http",
    "Did not auto detect external IP",
    "Please go to https://docs.streamlit.io",
)
WILDCARDS = ("", "0.0.0.0", "::")
BROWSER_WAIT_S = 120


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def streamlit_command(port: int, host: str) -> list[str]:
    """The `streamlit run` command line (also used by the browser test); always headless."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
    ]


def can_open_browser() -> bool:
    """Whether `webbrowser` would show a graphical browser (not a text one in this terminal)."""
    return bool(
        os.environ.get("BROWSER")
        or sys.platform in ("darwin", "win32")
        or os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
    )


def _open_when_up(health: str, url: str, server: subprocess.Popen) -> None:
    """Open `url` in the browser once the server answers `health` (gives up if it exits)."""
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + BROWSER_WAIT_S
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:
                if resp.read() == b"ok":
                    webbrowser.open(url)
                    return
        except OSError:
            pass
        time.sleep(0.3)


def _forward(stream) -> None:
    """Pass the server's output on, without its banner (see BANNER) and blank lines."""
    for line in stream:
        if line.strip() and not any(mark in line for mark in BANNER):
            sys.stdout.write(line)
            sys.stdout.flush()


def _wait(server: subprocess.Popen) -> int:
    """`server.wait()` in short slices: a plain `wait()` blocks in waitpid, and when Ctrl-C's
    SIGINT is delivered to another thread of this process (DuckDB keeps a thread pool) the
    main thread would never see the KeyboardInterrupt."""
    while True:
        try:
            return server.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def serve(ws: Workspace, *, port: int, host: str, no_browser: bool, token: str | None) -> None:
    """Serve the app on `ws` until Ctrl-C (or the server exits); see the module docstring."""
    Catalog.open(ws)  # applies pending migrations now: the app never writes
    if token is not None and not token.strip():
        raise KalmixError("--token must not be empty (leave it out to have one generated)")
    if token is None and not is_loopback(host):
        import secrets

        token = secrets.token_urlsafe(24)
    if not _port_free(host, port):
        raise KalmixError(f"port {port} on {host} is in use; choose another with --port")
    shown = socket.gethostname() if host in WILDCARDS else host
    query = f"/?token={token}" if token else ""
    url = f"http://{shown}:{port}{query}"
    console.print(
        f"kalmix dashboard on {url} for workspace {ws.root} (Ctrl-C stops)",
        markup=False,
        soft_wrap=True,
    )
    if token:
        console.print(
            f"listening on {host or 'every address'}: pages are readable by anyone who reaches "
            "the port; creating mixtures and starting training or evaluation need the token",
            markup=False,
            soft_wrap=True,
        )
    sys.stdout.flush()
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env.update(KALMIX_HOME=str(ws.root), PYTHONUNBUFFERED="1")
    if token:
        env[TOKEN_ENV] = token
    local = "localhost" if host in WILDCARDS else host
    try:
        server = subprocess.Popen(
            streamlit_command(port, host),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as err:
        raise KalmixError(f"cannot start streamlit: {err}") from None
    forwarder = threading.Thread(target=_forward, args=(server.stdout,), daemon=True)
    forwarder.start()
    if not no_browser and can_open_browser():
        threading.Thread(
            target=_open_when_up,
            args=(f"http://{local}:{port}/_stcore/health", f"http://{local}:{port}{query}", server),
            daemon=True,
        ).start()
    try:
        code = _wait(server)
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=20)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            server.kill()
        code = 0
    forwarder.join(timeout=5)  # the server's last words
    if code:
        raise KalmixError(f"streamlit exited with code {code}; its message is above")
