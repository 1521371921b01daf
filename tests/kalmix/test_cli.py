import json
import os
import subprocess
import sys

from tests.conftest import write_jsonl


def test_init_categories_ingest_datasets_show_check(cli, ws, tmp_path):
    result = cli("catalog", "categories", "--task-type", "sts", "--json")
    assert result.exit_code == 0, result.output
    cats = json.loads(result.output)
    assert cats and {c["task_type"] for c in cats} == {"sts"}

    src = write_jsonl(
        tmp_path / "faq.jsonl",
        [
            {"question": "Wie spät ist es?", "answer": "Es ist zehn Uhr.", "lang": "de"},
            {"question": "What time is it?", "answer": "Ten o'clock.", "lang": "en"},
        ],
    )
    result = cli("ingest", str(src), "--name", "faq", "--category", "faq-retrieval")
    assert result.exit_code == 0, result.output
    assert "faq@v1: 2 rows" in result.output

    result = cli("catalog", "datasets", "--where", "list_contains(languages, 'de')", "--json")
    assert [d["name"] for d in json.loads(result.output)] == ["faq"]
    result = cli("catalog", "datasets", "--where", "name <> 'a;b'", "--json")
    assert [d["name"] for d in json.loads(result.output)] == ["faq"]
    for bad in ("true; DROP TABLE datasets", "name = 'faq"):
        result = cli("catalog", "datasets", "--where", bad)
        assert "WHERE" in str(result.exception), result.output

    result = cli("catalog", "show", "faq@v1", "--json")
    shown = json.loads(result.output)
    assert shown["rows"] == 2 and shown["lineage"][0]["operation"] == "ingest"
    assert len(shown["sample"]) == 2

    result = cli("catalog", "show", "faq")
    assert result.exit_code == 0 and "lineage" in result.output

    result = cli("catalog", "check")
    assert "agree" in result.output


def test_errors_are_one_line_with_exit_code_2(ws, tmp_path):
    env = {**os.environ, "KALMIX_HOME": str(ws.root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kalmix",
            "ingest",
            str(tmp_path / "missing.jsonl"),
            "--name",
            "x",
            "--category",
            "faq-retrieval",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error: input not found" in proc.stderr and "Traceback" not in proc.stderr

    proc = subprocess.run(
        [sys.executable, "-m", "kalmix", "catalog", "show", "nothing"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown dataset" in proc.stderr


def test_no_workspace_says_how_to_make_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KALMIX_HOME"}
    proc = subprocess.run(
        [sys.executable, "-m", "kalmix", "catalog", "datasets"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "kalmix init" in proc.stderr


def test_every_command_has_help_with_an_example():
    import typer.main

    from kalmix.cli import app

    group = typer.main.get_command(app)

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    for path, cmd in walk(group, []):
        assert "Example:" in (cmd.help or ""), f"kalmix {' '.join(path)} has no example in --help"
