"""Helpers shared by the benchmarks: result files and peak memory of a child process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def run_child(code: str, *args: str) -> tuple[float, float, str]:
    """Run `code` in a fresh Python; return (seconds, its own peak RSS in MiB, stdout)."""
    code += "\nimport resource as _r, sys as _s\n_s.stderr.write(f'PEAK {_r.getrusage(_r.RUSAGE_SELF).ru_maxrss}\\n')\n"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    peak = int(proc.stderr.rsplit("PEAK ", 1)[1].split()[0]) / 1024
    return seconds, peak, proc.stdout


def write_results(name: str, data: dict, table_md: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": name,
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        **data,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{table_md}\n")
    print(table_md)
