"""`kalmix dashboard`: open the Streamlit app on a workspace.

The command upgrades the catalog schema (a short write) before the app starts, because the
app itself only ever reads. Streamlit is started as `python -m streamlit run dashboard/app.py`
with the workspace in `KALMIX_HOME`; it is imported only there, so `kalmix --help` stays fast.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import typer

from catalog.workspace import Workspace
from corpus.console import console
from corpus.errors import KalmixError

APP = Path(__file__).resolve().parent / "app.py"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def streamlit_command(port: int, host: str, headless: bool) -> list[str]:
    """The `streamlit run` command line (also used by the browser test)."""
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
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "minimal",
    ]


def dashboard(
    workspace: Path = typer.Option(
        None, "--workspace", "-w", help="Workspace folder (default: $KALMIX_HOME or the current)."
    ),
    port: int = typer.Option(8501, "--port", "-p", help="Port to serve on."),
    host: str = typer.Option(
        "localhost", "--host", help="Address to listen on (0.0.0.0 to reach it from elsewhere)."
    ),
    headless: bool = typer.Option(
        False, "--headless", help="Do not open a browser (on a server, or over SSH)."
    ),
) -> None:
    """Open the dashboard: browse the catalog, build mixtures, run training, compare scores.

    The app reads the catalog through short read-only connections, so it stays usable while
    a training run or an ingest writes; writes (new mixtures, runs) are `kalmix` commands it
    starts. Stop it with Ctrl-C; training runs it started keep going.

    Example: kalmix dashboard --workspace ws/ --port 8501
    """
    ws = Workspace.resolve(workspace)
    ws.catalog()  # applies pending migrations now: the app never writes
    if not _port_free(host, port):
        raise KalmixError(f"port {port} on {host} is in use; choose another with --port")
    console.print(
        f"kalmix dashboard on http://{host}:{port} for workspace {ws.root} (Ctrl-C stops)"
    )
    env = {**os.environ, "KALMIX_HOME": str(ws.root)}
    try:
        code = subprocess.run(streamlit_command(port, host, headless), env=env).returncode
    except KeyboardInterrupt:
        code = 0
    if code:
        raise KalmixError(f"streamlit exited with code {code}; its message is above")
