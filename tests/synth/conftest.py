"""Fixtures for synthesis tests: the sample corpus in a workspace, and a small persona set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from catalog import versions
from catalog.versions import Commit, DatasetInfo
from kalmix.ingest import ingest
from synth.backends import BackendConfig, SamplingParams
from tests.conftest import record_table

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "corpus" / "sample" / "faq_multilingual.jsonl"

PERSONAS = [
    "A home cook who plans cheap weekly meals for a family of four.",
    "A small-business owner who keeps the shop's computers backed up and secure.",
]


@pytest.fixture
def faq(cat):
    """The bundled multilingual FAQ sample as `faq@v1`."""
    return ingest(cat, SAMPLE, name="faq", category="faq-retrieval").ref


@pytest.fixture
def personas(cat, faq):
    """Two hand-written personas registered as `faq-personas@v1` (parent faq@v1)."""
    table = record_table(PERSONAS, category="persona", positive="(hand-written)")
    [ref] = versions.commit(
        cat,
        Commit(
            "faq-personas",
            table,
            "test",
            {},
            parent=faq,
            info=DatasetInfo("faq-personas", "persona", "retrieval", source="test"),
        ),
    )
    return ref


# Small, greedy generation keeps the model tests short and repeatable; one torch thread keeps
# them fast when other processes compete for the cores (see TransformersBackend).
FAST = SamplingParams(temperature=0.0, max_tokens=40, seed=0)


def transformers_config(**kw) -> BackendConfig:
    return BackendConfig(**{"kind": "transformers", "batch_size": 8, "threads": 1, **kw})


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """`python -m tests.synth.server --port 0 ARGS`; returns the process and its base URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.synth.server", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"server did not start: {url!r}")
    return proc, url


def records_meta(table: pa.Table) -> list[dict]:
    return [json.loads(m) for m in table.column("meta").to_pylist()]
