"""Helpers shared by the benchmarks: sizes from the command line, result files and peak memory
of a child process.

Every benchmark runs from the repository root as `.venv/bin/python -m benchmarks.NAME`
(`make bench` runs them all so), which puts the repository on `sys.path`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def sizes(doc: str, **defaults: int) -> argparse.Namespace:
    """The optional positional sizes of a benchmark sized on the command line (`[DOCS]`, ...),
    in the order given, each defaulting to its value; `--help` shows the docstring's first line."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    for name, default in defaults.items():
        parser.add_argument(name, nargs="?", type=int, default=default, help=f"default {default}")
    return parser.parse_args()


def machine() -> dict:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def uptime() -> str:
    """`uptime`'s line (the load average), for a results file: the machine may be shared."""
    import os

    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    return out.strip() or "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


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
