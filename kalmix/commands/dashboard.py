"""`kalmix dashboard`: the Streamlit app on the workspace (`dashboard.server` starts it)."""

from __future__ import annotations

import typer

from dashboard.auth import TOKEN_ENV


def dashboard(
    port: int = typer.Option(8501, "--port", "-p", help="Port to serve on."),
    host: str = typer.Option(
        "localhost",
        "--host",
        help="Address to listen on. Any address but loopback (e.g. 0.0.0.0, to reach it from "
        "elsewhere) requires a token.",
    ),
    no_browser: bool = typer.Option(
        False,
        "--no-browser",
        "--headless",
        help="Do not open a browser (on a server, or over SSH). The server never prompts "
        "either way.",
    ),
    token: str = typer.Option(
        None,
        "--token",
        envvar=TOKEN_ENV,
        help="The token a browser session must present (?token=... or the sidebar) before it "
        "may create mixtures or start training and evaluation. Default: generated when --host "
        "is not a loopback address, none otherwise.",
    ),
) -> None:
    """Open the dashboard: browse the catalog, build mixtures, run training, compare scores.

    The app reads the catalog through short read-only connections, so it stays usable while
    a training run or an ingest writes; writes (new mixtures, runs) are `kalmix` commands it
    starts. Stop it with Ctrl-C; training runs it started keep going.

    Example: kalmix dashboard --port 8501   (another workspace: kalmix -w ws/ dashboard)
    """
    from catalog.workspace import Workspace
    from dashboard.server import serve

    serve(Workspace.resolve(), port=port, host=host, no_browser=no_browser, token=token)


def register(app: typer.Typer) -> None:
    """Add `dashboard` to the `kalmix` app."""
    app.command("dashboard")(dashboard)
