"""Only kalmix's own rich bars: importing kalmix turns the libraries' tqdm bars off (transformers'
GGUF conversion, Hugging Face's loading bars), unless the user asked for them."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import kalmix\nfrom tqdm.auto import tqdm\nprint(tqdm(range(3), desc='probe').disable)"


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE",)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "probe" not in out.stderr or "TQDM_DISABLE" in env
    return out.stdout.strip()


def test_library_tqdm_bars_are_off_unless_asked_for():
    assert probe() == "True"
    assert probe(TQDM_DISABLE="") == "False"  # tqdm reads any non-empty value as true
