"""`kalmix --help`, every command's `--help` and a bad option answer without the heavy libraries.

The rule (kalmix/commands/__init__.py): the command modules import Arrow, polars, DuckDB,
torch and the operators inside the commands, and option declarations use only the light
`vocabulary` modules. Each check runs in a fresh interpreter and reads its `sys.modules`: no
timing here (benchmarks/startup.py measures the time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = (
    "polars",
    "pyarrow",
    "duckdb",
    "numpy",
    "torch",
    "transformers",
    "sentence_transformers",
    "datasketch",
    "mteb",
    "streamlit",
    "ray",
)

# Runs each argument list through kalmix's entry point in one interpreter, in order, and
# prints, as its last line, each one's exit code and the heavy modules loaded by then.
PROBE = """
import json, sys
from kalmix.cli import main
heavy, cases, seen = json.loads(sys.argv[1]), json.loads(sys.argv[2]), []
loaded = lambda: [m for m in heavy if m in sys.modules]
seen.append({"args": None, "code": None, "loaded": loaded()})
for args in cases:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    seen.append({"args": args, "code": code, "loaded": loaded()})
sys.stdout.flush()
print("\\n" + json.dumps(seen))
"""


def _probe(cases: list[list[str]], tmp_path) -> list[dict]:
    env = {**os.environ, "KALMIX_HOME": str(tmp_path / "no-workspace"), "COLUMNS": "140"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(cases)],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _every_help() -> list[list[str]]:
    """`--help` of the root, of every group and of every command, from the app itself."""
    import typer.main

    from kalmix.cli import app

    cases: list[list[str]] = [["--help"]]

    def walk(command, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            cases.append([*path, name, "--help"])
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return cases


def test_import_and_help_load_no_heavy_library(tmp_path):
    cases = _every_help()
    assert ["dedup", "--help"] in cases and ["mix", "create", "--help"] in cases
    seen = _probe(cases, tmp_path)
    assert seen[0]["loaded"] == [], "import kalmix.cli"
    for case in seen[1:]:
        assert case["code"] == 0, case["args"]
        assert case["loaded"] == [], f"kalmix {' '.join(case['args'])}"


def test_bad_options_load_no_heavy_library(tmp_path):
    cases = [
        ["dedup", "faq", "--no-such-option"],
        ["dedup", "faq", "--threshold", "high"],
        ["mix", "create"],
        ["train"],
        ["synth", "generate", "--bogus"],
        ["eval", "compare", "--no-such-option"],
        ["no-such-command"],
    ]
    for case in _probe(cases, tmp_path)[1:]:
        assert case["code"] == 2, case["args"]
        assert case["loaded"] == [], f"kalmix {' '.join(case['args'])}"


def test_a_command_that_runs_still_loads_what_it_needs(tmp_path):
    """The imports moved into the commands are there when a command runs."""
    ws = str(tmp_path / "ws")
    seen = _probe([["init", ws], ["-w", ws, "catalog", "datasets", "--json"]], tmp_path)
    assert [c["code"] for c in seen[1:]] == [0, 0]
    assert {"duckdb", "pyarrow"} <= set(seen[-1]["loaded"])
