"""A workspace is a folder: `catalog.duckdb`, `data/`, `runs/`, `cache/` and `kalmix.toml`.

It lives in `catalog/` (not `kalmix/`) because every package that talks to the catalog, the
trainer and the dashboard included, must find the same workspace the same way: `--workspace`,
else `KALMIX_HOME`, else the current folder if it holds a `kalmix.toml`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from corpus import storage
from corpus.errors import KalmixError
from corpus.schema import DEFAULT_ID_ALGORITHM, ID_ALGORITHMS
from corpus.storage import StorePath, is_uri
from corpus.toml import parse_toml

CONFIG_NAME = "kalmix.toml"

DEFAULT_SETTINGS: dict[str, Any] = {
    "catalog": {"lock_timeout_s": 60.0},
    "executor": {"kind": "local", "workers": 0},
    "storage": {"data": ""},  # where version shards live: "" = <workspace>/data, or a URI
    "embedder": {"model": "", "batch_size": 64},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def data_root(self) -> StorePath:
        """Where dataset versions are written: `data/` here, or `[storage] data` (a folder or
        a URI such as s3://bucket/prefix, which Ray workers on other machines can reach)."""
        configured = str((self.settings.get("storage") or {}).get("data") or "")
        if not configured:
            return self.data_dir
        return configured if is_uri(configured) else self.root / Path(configured).expanduser()

    def locate(self, path: str) -> StorePath:
        """A path the catalog recorded: relative to the workspace, or a URI."""
        return path if is_uri(path) else self.root / path

    def record(self, path: StorePath) -> str:
        """How the catalog records `path`: relative to the workspace when it is inside it."""
        if is_uri(path):
            return str(path)
        path = Path(path)
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    @property
    def id_algorithm(self) -> str:
        """How this workspace's record ids are made (`[records] id`): chosen when `kalmix init`
        created it and kept, so one file ingested twice gets the same ids. A workspace from
        before the setting has none in its kalmix.toml: md5, as its versions were made."""
        return str((self.settings.get("records") or {}).get("id") or "md5")

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @classmethod
    def init(cls, root: Path, data: str | None = None) -> Workspace:
        """Create (or complete) a workspace's folders and settings; idempotent, never touches
        existing data. The catalog comes from `Catalog.open` (what `kalmix init` does next).

        `data` sets `[storage] data`, where new dataset versions go (e.g. s3://bucket/prefix);
        it is checked by writing there, so a wrong bucket or credentials fail now.
        """
        root = Path(root).expanduser().resolve()
        config = root / CONFIG_NAME
        try:
            for sub in ("data", "runs", "cache"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            settings = (
                parse_toml(config.read_text(), config)
                if config.exists()
                else {**DEFAULT_SETTINGS, "records": {"id": DEFAULT_ID_ALGORITHM}}
            )
            if data is not None:
                settings = _merge(settings, {"storage": {"data": data}})
                _check_writable(cls(root, _merge(DEFAULT_SETTINGS, settings)).data_root)
            if data is not None or not config.exists():
                config.write_text(
                    "# kalmix workspace settings; every key is optional.\n"
                    + tomli_w.dumps(settings)
                )
        except PermissionError as err:
            raise KalmixError(f"cannot create a workspace at {root}: {err.strerror}") from None
        return cls.load(root)

    @classmethod
    def load(cls, root: Path) -> Workspace:
        root = Path(root).expanduser().resolve()
        config = root / CONFIG_NAME
        if not config.exists():
            raise KalmixError(
                f"{root} is not a kalmix workspace (no {CONFIG_NAME}); create one with: kalmix init {root}"
            )
        settings = _merge(DEFAULT_SETTINGS, parse_toml(config.read_text(), config))
        workspace = cls(root=root, settings=settings)
        if workspace.id_algorithm not in ID_ALGORITHMS:
            raise KalmixError(
                f"{config}: [records] id = {workspace.id_algorithm!r} is not an id algorithm; "
                f"one of: {', '.join(ID_ALGORITHMS)}"
            )
        return workspace

    @classmethod
    def resolve(cls, path: Path | str | None = None) -> Workspace:
        """The workspace named by `path`, else `KALMIX_HOME`, else the current folder."""
        if path:
            return cls.load(Path(path))
        env = os.environ.get("KALMIX_HOME")
        if env:
            return cls.load(Path(env))
        if (Path.cwd() / CONFIG_NAME).exists():
            return cls.load(Path.cwd())
        raise KalmixError(
            "no workspace: pass --workspace DIR, set KALMIX_HOME, or run inside one "
            "(create it with: kalmix init DIR)"
        )


def _check_writable(root: StorePath) -> None:
    """Write and remove a marker under `root`: an unreachable store fails with its reason."""
    probe = storage.join(root, f".kalmix-probe-{os.getpid()}")
    try:
        storage.makedirs(probe)
        storage.write_bytes(storage.join(probe, "ok"), b"ok")
        storage.rmtree(probe)
    except OSError as err:
        raise KalmixError(f"cannot write to the data root {root}: {err}") from None
