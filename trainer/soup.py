"""Model soup: a weighted average of the parameters of runs of one architecture (Wortsman et al.
2022; KaLM-Embedding's last step), exported and registered as a run of kind `soup`.

The parts are the exported sentence-transformers folders of completed runs. They must share the
architecture: the same modules (pooling included), the same transformers config (names and
versions aside) and the same parameter names and shapes; otherwise the soup is refused with the
first difference, since averaging unrelated weights gives a broken model silently. Weights are
normalised to sum to 1; they default to a uniform soup. Parameters are averaged in float32 and
stored in each part's dtype.

The soup's folder is a copy of the first part's (tokenizer, prompts, pooling, Matryoshka dims)
with the averaged weights, written in a staging folder and renamed into place. Its run row names
its parts and weights in `config` (the lineage), with the first part's base model.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from catalog import runs
from catalog.db import Catalog
from catalog.workspace import Workspace
from corpus.console import console
from corpus.errors import KalmixError

IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype"}


@dataclass
class SoupResult:
    run: str
    model_path: Path
    parts: list[str]
    weights: list[float]


def _weights(parts: list[str], weights: list[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / len(parts)] * len(parts)
    if len(weights) != len(parts):
        raise KalmixError(
            f"--weights has {len(weights)} values for {len(parts)} runs; give one each"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise KalmixError("--weights must be non-negative with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def _architecture(folder: Path) -> tuple[dict, dict, dict[str, dict[str, tuple]]]:
    """(modules + module configs, transformers config, {file: {param: (shape, dtype)}})."""
    if not (folder / "modules.json").exists() or not (folder / "config.json").exists():
        raise KalmixError(f"{folder} is not an exported sentence-transformers model folder")
    modules = json.loads((folder / "modules.json").read_text())
    module_configs = {}
    for module in modules:
        config = folder / module["path"] / "config.json"
        if module["path"] and config.exists():
            module_configs[module["path"]] = json.loads(config.read_text())
    config = json.loads((folder / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise KalmixError(f"{folder} has no .safetensors weights to average")
    params = {}
    for f in files:
        tensors = load_file(f)
        params[f.name] = {k: (tuple(v.shape), str(v.dtype)) for k, v in tensors.items()}
    return {"modules": modules, "configs": module_configs}, config, params


def _first_difference(a: dict, b: dict) -> str:
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key, '(missing)')} vs {b.get(key, '(missing)')}"
    return ""


def check_same_architecture(folders: list[Path], names: list[str]) -> None:
    """Refuse parts whose modules, config or parameter shapes differ from the first part's."""
    first = _architecture(folders[0])
    for folder, name in zip(folders[1:], names[1:], strict=True):
        other = _architecture(folder)
        for what, x, y in (
            ("modules", first[0], other[0]),
            ("model config", first[1], other[1]),
        ):
            diff = _first_difference(x, y)
            if diff:
                raise KalmixError(
                    f"cannot soup {names[0]} with {name}: different architecture ({what} "
                    f"differ, {diff}); a soup averages runs of the same base model"
                )
        if first[2] != other[2]:
            keys = {f"{f}/{k}": v for f, p in first[2].items() for k, v in p.items()}
            other_keys = {f"{f}/{k}": v for f, p in other[2].items() for k, v in p.items()}
            diff = _first_difference(keys, other_keys)
            raise KalmixError(
                f"cannot soup {names[0]} with {name}: different parameters ({diff}); a soup "
                "averages runs of the same base model"
            )


def average(folders: list[Path], weights: list[float], out: Path) -> Path:
    """Write `out`: a copy of the first folder with the weighted average of every weight file."""
    out = Path(out)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(folders[0], staging)
        for f in sorted(folders[0].glob("*.safetensors")):
            mean: dict[str, torch.Tensor] = {}
            dtypes = {}
            for folder, w in zip(folders, weights, strict=True):
                for key, tensor in load_file(folder / f.name).items():
                    dtypes[key] = tensor.dtype
                    mean[key] = mean.get(key, 0) + w * tensor.float()
            save_file(
                {k: v.to(dtypes[k]).contiguous() for k, v in mean.items()},
                staging / f.name,
                metadata={"format": "pt"},
            )
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def soup(
    ws: Workspace, parts: list[str], *, out_run: str, weights: list[float] | None = None
) -> SoupResult:
    """Average the exported models of completed runs `parts` into run `out_run`."""
    if len(parts) < 2:
        raise KalmixError("a soup needs at least two runs")
    if len(set(parts)) != len(parts):
        raise KalmixError("each run may appear once in a soup; use --weights to weigh one more")
    cat = Catalog.open(ws)
    norm = _weights(parts, weights)
    infos = [runs.require_run(cat, name) for name in parts]
    for info in infos:
        if info.status != "completed" or not info.model_path.exists():
            raise KalmixError(
                f"run {info.name} has no exported model (status {info.status}); only completed "
                "runs can go into a soup"
            )
    if runs.get_run(cat, out_run) is not None:
        raise KalmixError(f"run {out_run!r} already exists; choose another --out-run")
    folders = [info.model_path for info in infos]
    check_same_architecture(folders, parts)
    runs.create_run(
        cat,
        out_run,
        mixture=None,
        mixture_version=None,
        base_model=infos[0].base_model or "",
        config={
            "parts": parts,
            "weights": norm,
            "part_mixtures": [info.mixture_ref for info in infos],
        },
        kind="soup",
    )
    model_path = runs.run_dir(cat, out_run) / runs.MODEL_FOLDER
    try:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        average(folders, norm, model_path)
    except BaseException as err:
        runs.update_run(cat, out_run, status="failed", error=f"{type(err).__name__}: {err}")
        raise
    summary = {"parts": parts, "weights": norm, "model_path": str(model_path.relative_to(ws.root))}
    runs.update_run(cat, out_run, status="completed", summary=summary)
    console.print(
        f"soup: {' + '.join(f'{w:.2f} x {p}' for p, w in zip(parts, norm, strict=True))} -> "
        f"run {out_run}; model at {model_path}"
    )
    return SoupResult(out_run, model_path, parts, norm)
