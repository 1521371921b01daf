"""Shared fixtures: a fresh workspace, the shared evaluation data, a CLI runner, and a local S3
server for data on an object store."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalog.db import Catalog
from catalog.workspace import Workspace
from corpus import schema

SHARED_DATA = Path(
    os.environ.get("KALMIX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A new workspace as `kalmix init` leaves it: folders, settings and a seeded catalog."""
    workspace = Workspace.init(tmp_path / "ws")
    Catalog.open(workspace)
    monkeypatch.setenv("KALMIX_HOME", str(workspace.root))
    return workspace


@pytest.fixture
def cat(ws: Workspace):
    return Catalog.open(ws)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


# What `record_table` fills in for a field it is not given.
RECORD_DEFAULTS = {
    "task_type": "retrieval",
    "category": "faq-retrieval",
    "instruction": None,
    "positive": None,
    "score": None,
    "label": None,
    "language": "en",
    "source": "test",
    "meta": "{}",
}


def record_table(queries: list[str], *, negatives: list[list[str]] | None = None, **fields):
    """`corpus.schema.record_table` with `RECORD_DEFAULTS` for the fields not given."""
    return schema.record_table(queries, negatives=negatives, **{**RECORD_DEFAULTS, **fields})


@pytest.fixture
def cli():
    """Invoke the kalmix app in-process; returns (exit_code, output, exception)."""
    from kalmix.cli import app

    runner = CliRunner()

    def run(*args: str):
        # `--workspace` sets KALMIX_HOME for the commands; naming it here restores it after.
        keep = {"KALMIX_HOME": os.environ.get("KALMIX_HOME")}
        return runner.invoke(app, list(args), catch_exceptions=True, env=keep)

    return run


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 server (moto) for the session: the object-store path, tested offline."""
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_uri(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<fresh bucket>/data`, with the AWS_* variables that point pyarrow at the local
    server (Ray started after this fixture passes them on to its workers)."""
    import pyarrow.fs as pafs

    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = f"kalmix-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_endpoint, allow_bucket_creation=True).create_dir(bucket)
    return f"s3://{bucket}/data"


@pytest.fixture
def local_ray():
    """A local Ray (2 CPUs) for one test. Its workers copy the environment when it starts, so
    a test that also uses `s3_uri` must list that fixture first."""
    ray = pytest.importorskip("ray")
    from ray.data.context import ShuffleStrategy

    if ray.is_initialized():  # started by an earlier test, maybe with another environment
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    default = context.shuffle_strategy
    # Small data: the sort-based group-by starts no shuffle actors. The default hash shuffle
    # gives the same groups; it is only slower to start on two cores.
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    yield ray
    context.shuffle_strategy = default
    ray.shutdown()
