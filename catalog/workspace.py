"""A workspace is a folder: `catalog.duckdb`, `data/`, `runs/`, `cache/` and `kalmix.toml`.

It lives in `catalog/` (not `kalmix/`) because every package that talks to the catalog, the
trainer and the dashboard included, must find the same workspace the same way: `--workspace`,
else `KALMIX_HOME`, else the current folder if it holds a `kalmix.toml`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from corpus.errors import KalmixError

CONFIG_NAME = "kalmix.toml"

DEFAULT_SETTINGS: dict[str, Any] = {
    "catalog": {"lock_timeout_s": 60.0},
    "executor": {"kind": "local", "workers": 0},
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
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def catalog(self):
        """The catalog of this workspace (schema migrated on first use)."""
        from catalog.db import Catalog

        return Catalog.open(self)

    @classmethod
    def init(cls, root: Path) -> Workspace:
        """Create (or complete) a workspace; idempotent, never touches existing data."""
        root = Path(root).expanduser().resolve()
        try:
            for sub in ("data", "runs", "cache"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            config = root / CONFIG_NAME
            if not config.exists():
                config.write_text(
                    "# kalmix workspace settings; every key is optional.\n"
                    + tomli_w.dumps(DEFAULT_SETTINGS)
                )
        except PermissionError as err:
            raise KalmixError(f"cannot create a workspace at {root}: {err.strerror}") from None
        ws = cls.load(root)
        ws.catalog()  # creates catalog.duckdb, applies migrations, seeds the taxonomy
        return ws

    @classmethod
    def load(cls, root: Path) -> Workspace:
        root = Path(root).expanduser().resolve()
        config = root / CONFIG_NAME
        if not config.exists():
            raise KalmixError(
                f"{root} is not a kalmix workspace (no {CONFIG_NAME}); create one with: kalmix init {root}"
            )
        try:
            settings = _merge(DEFAULT_SETTINGS, tomllib.loads(config.read_text()))
        except tomllib.TOMLDecodeError as err:
            raise KalmixError(f"{config} is not valid TOML: {err}") from None
        return cls(root=root, settings=settings)

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
