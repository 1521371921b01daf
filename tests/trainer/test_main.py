"""`python -m trainer` (what torchrun starts) is `kalmix train` through kalmix's one entry
point: the same quiet console and the same one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.trainer.helpers import tiny_bert, training_workspace


def _python_m_trainer(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        env={**env, "KALMIX_HOME": str(ws)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_python_m_trainer_is_kalmix_train(tmp_path):
    ws, mixture = training_workspace(tmp_path / "ws")
    bert = tiny_bert(tmp_path / "bert")
    done = _python_m_trainer(
        ws.root, mixture, "--out-run", "via-main", "--base", str(bert), "--batch-size", "4",
        "--max-steps", "1", "--max-length", "32", "--negatives", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "run via-main" in done.stdout
    # Hugging Face's own loading bars (tqdm: "Loading weights: 100%|...| 12/12") stay off.
    assert "Loading" not in done.stderr and "it/s]" not in done.stderr, done.stderr

    bad = _python_m_trainer(ws.root, "nope@v1", "--out-run", "bad")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr

    # The workspace is a root option only (here: $KALMIX_HOME), never a second train option.
    moved = _python_m_trainer(ws.root, mixture, "--out-run", "x", "--workspace", str(ws.root))
    assert moved.returncode == 2 and "No such option" in moved.stderr
