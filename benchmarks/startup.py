"""Start-up: `kalmix --help` and `import kalmix.cli`, beside the interpreter and the heavy imports.

Each figure is the median of RUNS fresh processes after one warm-up (files in the page cache,
bytecode compiled: the warm start a user sees from the second call on), wall time and the
child's CPU time. Measured:

- `kalmix --help`, `kalmix dedup --help` and `kalmix dedup faq --no-such-option` (an argument
  error, exit 2), through the console script;
- the in-process time of `import kalmix.cli` (perf_counter around the import);

beside, same run: `python -c pass` (the interpreter's own start, the floor) and
`import polars, pyarrow, duckdb` in-process and as a whole process (what every command paid
before its CLI imported them lazily, issue 20.7; what a command that works on data still pays).
With `--before REV`, also the tree of git revision REV (extracted to a temporary folder, run
from there as `python -m kalmix`, beside the current tree the same way): the results file's
run used the revision before issue 20.7's change. Target: `kalmix --help` under 0.3 s warm.
`uptime` is recorded before and after.

Run: .venv/bin/python -m benchmarks.startup [RUNS] [--before REV]   (default 15 runs)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import uptime, write_results

PARSER = argparse.ArgumentParser(description=__doc__.split("\n")[0])
PARSER.add_argument("runs", nargs="?", type=int, default=15, help="default 15")
PARSER.add_argument("--before", metavar="REV", help="also measure this git revision's tree")
ARGS = PARSER.parse_args()
RUNS = ARGS.runs
TARGET_S = 0.3
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "kalmix"
KALMIX = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "kalmix"]

IMPORT_TIME = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"


def child_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def run(argv: list[str], ok: tuple[int, ...] = (0,), cwd: Path = ROOT) -> tuple[float, float, str]:
    """One fresh process: (wall seconds, its CPU seconds, stdout)."""
    env = {**os.environ, "COLUMNS": "140"}
    wall, cpu = time.perf_counter(), child_cpu()
    proc = subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    wall, cpu = time.perf_counter() - wall, child_cpu() - cpu
    if proc.returncode not in ok:
        raise RuntimeError(f"{argv}: exit {proc.returncode}\n{proc.stderr}")
    return wall, cpu, proc.stdout


def measure(
    argv: list[str], ok: tuple[int, ...] = (0,), inner: bool = False, cwd: Path = ROOT
) -> dict:
    """Median over RUNS after a warm-up; `inner`: the time the child prints (an import)."""
    run(argv, ok, cwd)
    walls, cpus, inners = [], [], []
    for _ in range(RUNS):
        wall, cpu, out = run(argv, ok, cwd)
        walls.append(wall)
        cpus.append(cpu)
        if inner:
            inners.append(float(out.strip().splitlines()[-1]))
    result = {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "wall_min_s": min(walls),
        "wall_max_s": max(walls),
    }
    if inner:
        result["import_s"] = statistics.median(inners)
    return result


def tree_of(rev: str, folder: Path) -> Path:
    """Revision `rev` of this repository, extracted into `folder` (imports resolve there first:
    the current directory leads `sys.path` for `-c` and `-m`, before the editable install)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    where = run([sys.executable, "-c", "import kalmix.cli; print(kalmix.cli.__file__)"], cwd=folder)
    if not where[2].strip().startswith(str(folder)):
        raise RuntimeError(f"{rev}: kalmix.cli came from {where[2].strip()}, not {folder}")
    return folder


def before_cases(rev: str) -> dict[str, dict]:
    """`import kalmix.cli` and `python -m kalmix --help` of revision `rev` and of this tree."""
    python = [sys.executable, "-c"]
    with tempfile.TemporaryDirectory() as tmp:
        old = tree_of(rev, Path(tmp))
        return {
            f"{rev}: import kalmix.cli": measure(
                [*python, IMPORT_TIME.format("kalmix.cli")], inner=True, cwd=old
            ),
            f"{rev}: python -m kalmix --help": measure(
                [sys.executable, "-m", "kalmix", "--help"], cwd=old
            ),
            "this tree: python -m kalmix --help": measure(
                [sys.executable, "-m", "kalmix", "--help"]
            ),
        }


def main() -> None:
    python = [sys.executable, "-c"]
    load_before, start = uptime(), time.perf_counter()
    cases = {
        "python -c pass (interpreter start, floor)": measure([*python, "pass"]),
        "import polars, pyarrow, duckdb (baseline)": measure(
            [*python, IMPORT_TIME.format("polars, pyarrow, duckdb")], inner=True
        ),
        "import kalmix.cli": measure([*python, IMPORT_TIME.format("kalmix.cli")], inner=True),
        "kalmix --help": measure([*KALMIX, "--help"]),
        "kalmix dedup --help": measure([*KALMIX, "dedup", "--help"]),
        "kalmix dedup faq --no-such-option (exit 2)": measure(
            [*KALMIX, "dedup", "faq", "--no-such-option"], ok=(2,)
        ),
        **(before_cases(ARGS.before) if ARGS.before else {}),
    }
    load_after = uptime()
    floor = cases["python -c pass (interpreter start, floor)"]["wall_s"]
    heavy = cases["import polars, pyarrow, duckdb (baseline)"]
    cli = cases["import kalmix.cli"]
    help_s = cases["kalmix --help"]["wall_s"]
    md = [
        f"Median of {RUNS} fresh processes after one warm-up; CPU is the child's user + system "
        f"time. Console script: `{' '.join(Path(a).name for a in KALMIX)}`.",
        "",
        f"Load before: `{load_before}`  ",
        f"Load after: `{load_after}`",
        "",
        "| process | wall (s) | CPU (s) | min-max wall (s) | import alone (s) |",
        "|---|---|---|---|---|",
    ]
    for label, r in cases.items():
        md.append(
            f"| {label} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
            f"{r['wall_min_s']:.3f}-{r['wall_max_s']:.3f} | "
            + (f"{r['import_s']:.3f} |" if "import_s" in r else "|")
        )
    verdict = "met" if help_s < TARGET_S else "missed"
    md += [
        "",
        f"Target: `kalmix --help` under {TARGET_S} s warm; measured {help_s:.3f} s ({verdict}), "
        f"{help_s - floor:.3f} s above the bare interpreter. `import kalmix.cli` takes "
        f"{cli['import_s'] * 1000:.0f} ms, {heavy['import_s'] / cli['import_s']:.1f}x less than "
        f"importing polars, pyarrow and duckdb ({heavy['import_s'] * 1000:.0f} ms), which every "
        "command paid at start-up before issue 20.7.",
    ]
    if ARGS.before:
        old = cases[f"{ARGS.before}: python -m kalmix --help"]
        new = cases["this tree: python -m kalmix --help"]
        old_cli = cases[f"{ARGS.before}: import kalmix.cli"]
        md.append(
            f"\nBefore, same run (`{ARGS.before}`): `python -m kalmix --help` {old['wall_s']:.3f} s "
            f"-> {new['wall_s']:.3f} s wall ({old['wall_s'] / new['wall_s']:.1f}x), "
            f"{old['cpu_s']:.3f} -> {new['cpu_s']:.3f} CPU-s; `import kalmix.cli` "
            f"{old_cli['import_s'] * 1000:.0f} -> {cli['import_s'] * 1000:.0f} ms."
        )
    data = {
        "runs": RUNS,
        "before": ARGS.before,
        "target_s": TARGET_S,
        "cases": cases,
        "uptime_before": load_before,
        "uptime_after": load_after,
        "seconds": time.perf_counter() - start,
    }
    write_results("startup", data, "\n".join(md))


if __name__ == "__main__":
    main()
