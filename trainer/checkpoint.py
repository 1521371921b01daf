"""Checkpoints: everything needed to continue a run bit-for-bit, written atomically.

`<run>/checkpoints/step-000123/` holds the model weights, the optimizer and scheduler states,
`state.json` (step, sampler state, config, progress counters) and one RNG file per process
(torch CPU and CUDA generators: dropout and random choices continue where they were). A
checkpoint is written in a staging folder and renamed into place, so a crash mid-save leaves
the previous checkpoint as the latest; only the `keep` newest are kept.

Only the main process writes weights and optimizer state (they are identical on every process
after the all-reduce); each process writes its own RNG file.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corpus.errors import KalmixError

PREFIX = "step-"


def checkpoints_dir(run_path: Path) -> Path:
    return Path(run_path) / "checkpoints"


def rng_state() -> dict[str, Any]:
    """This process's torch RNG state (CPU, and every CUDA device's): what a checkpoint keeps,
    and what GradCache's second pass replays per chunk so dropout matches its first pass."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back a state `rng_state` took."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def staging_path(run_path: Path, step: int) -> Path:
    return checkpoints_dir(run_path) / f".{step_name(step)}.staging"


def save_rng(run_path: Path, step: int, rank: int) -> None:
    """This process's RNG state into the checkpoint being staged (call on every rank)."""
    folder = staging_path(run_path, step)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), folder / f"rng-{rank}.pt")


def save_checkpoint(
    run_path: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Main process: weights, optimizer, scheduler, state; then publish and prune old ones.

    Every rank must have called `save_rng` for this step before (a barrier in between).
    """
    folder = staging_path(run_path, step)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    (folder / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    final = checkpoints_dir(run_path) / step_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.rename(folder, final)
    for old in list_checkpoints(run_path)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_path: Path) -> list[Path]:
    folder = checkpoints_dir(run_path)
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


@dataclass
class Restored:
    step: int
    state: dict[str, Any]
    path: Path


def load_checkpoint(
    path: Path,
    *,
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Restored:
    """Restore a checkpoint into the given objects and this process's RNG."""
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    )
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / f"rng-{rank}.pt"
    if not rng.exists():
        raise KalmixError(
            f"checkpoint {path} has no RNG state for process {rank}: resume with the number of "
            "processes the run was started with"
        )
    set_rng_state(torch.load(rng, weights_only=True))
    state = json.loads((path / "state.json").read_text())
    return Restored(step=state["step"], state=state, path=path)
