"""A real `kalmix synth generate` killed with SIGKILL continues where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from catalog import versions
from tests.synth.conftest import ROOT

ARGS = [
    "synth", "generate", "--personas", "faq-personas", "--task-types", "sts",
    "--per-persona", "1", "--languages", "en", "--name", "synth-r", "--shard-size", "1",
    "--max-tokens", "16", "--temperature", "0", "--max-retries", "0", "--threads", "1",
]  # fmt: skip


def test_killed_generate_resumes_without_redoing_finished_prompts(ws, cat, personas, cli):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KALMIX_HOME": str(ws.root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kalmix", *ARGS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    parts: list = []
    while not parts and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        parts = list((ws.runs_dir / "synth").glob("generate-*/parts/part-*.parquet"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    [work] = list((ws.runs_dir / "synth").glob("generate-*"))
    before = {p.name: p.read_bytes() for p in (work / "parts").glob("part-*.parquet")}
    assert len(before) == 1
    assert not cat.query("SELECT * FROM datasets WHERE name = 'synth-r'").num_rows

    result = cli(*ARGS)
    assert result.exit_code == 0, result.output
    assert f"resumed {len(before)} jobs" in result.output
    after = sorted((work / "parts").glob("part-*.parquet"))
    assert len(after) == 2  # one shard per job: nothing done twice
    for path in after:
        if path.name in before:
            assert path.read_bytes() == before[path.name]  # finished shards untouched
    job_ids = [j for p in after for j in pq.read_table(p).column("job_id").to_pylist()]
    assert len(set(job_ids)) == 2
    info = versions.resolve(cat, "synth-r")
    assert info.stats["synth"]["resumed_jobs"] == len(before)
    assert info.stats["synth"]["jobs"] == 2
