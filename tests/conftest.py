"""Shared fixtures: a fresh workspace, the shared evaluation data, and a CLI runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalog.workspace import Workspace

SHARED_DATA = Path(
    os.environ.get("KALMIX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    workspace = Workspace.init(tmp_path / "ws")
    monkeypatch.setenv("KALMIX_HOME", str(workspace.root))
    return workspace


@pytest.fixture
def cat(ws: Workspace):
    return ws.catalog()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture
def cli():
    """Invoke the kalmix app in-process; returns (exit_code, output, exception)."""
    from kalmix.cli import app

    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(app, list(args), catch_exceptions=True)
        return result

    return run
