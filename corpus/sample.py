"""The bundled demo sample: hand-written multilingual files plus a set built from Python's docs.

`python -m corpus.sample OUT_DIR` writes `python_docs.jsonl` (questions about standard-library
functions paired with their docstrings: real text present on every machine with Python) and
copies the hand-written files shipped in `corpus/sample/` beside it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import sys
from importlib import resources
from pathlib import Path

from corpus.corpora.pydocs import flatten

MODULES = (
    "json",
    "os.path",
    "re",
    "itertools",
    "functools",
    "collections",
    "pathlib",
    "string",
    "textwrap",
    "math",
    "statistics",
    "datetime",
    "random",
    "shutil",
    "csv",
    "gzip",
    "hashlib",
    "heapq",
    "bisect",
    "argparse",
    "base64",
    "calendar",
    "copy",
    "difflib",
    "fnmatch",
    "glob",
    "html",
    "ipaddress",
    "operator",
    "pprint",
    "secrets",
    "shlex",
    "struct",
    "tempfile",
    "uuid",
    "zipfile",
    "tarfile",
    "urllib.parse",
    "unicodedata",
    "fractions",
    "decimal",
    "enum",
)


def python_docs_records() -> list[dict]:
    """One record per public, documented function or class of a fixed list of stdlib modules."""
    rows = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (
                inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)
            ):
                continue
            owner = (getattr(obj, "__module__", None) or module_name).lstrip("_").split(".")[0]
            if owner not in (module_name.split(".")[0], "posixpath"):
                continue  # re-exported from elsewhere
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 40:
                continue
            doc = flatten(doc, 1200)
            rows.append(
                {
                    "question": f"How do I use {module_name}.{name} in Python?",
                    "answer": doc,
                    "module": module_name,
                    "lang": "en",
                }
            )
    return rows


def write_sample(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    docs = out / "python_docs.jsonl"
    with docs.open("w") as f:
        for row in python_docs_records():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    files.append(docs)
    for item in resources.files("corpus").joinpath("sample").iterdir():
        if item.name.endswith(".jsonl"):
            target = out / item.name
            with resources.as_file(item) as src:
                shutil.copyfile(src, target)
            files.append(target)
    return files


if __name__ == "__main__":
    for path in write_sample(Path(sys.argv[1] if len(sys.argv) > 1 else "sample")):
        print(f"{path}: {sum(1 for _ in path.open())} rows")
