"""A training run: the loop over the stages of a mixture, checkpoints, resume, SIGTERM, and the
run's row in the catalog.

One script for one CPU, one GPU or many (`torchrun`, `trainer/distributed.py`);
`trainer/step.py` computes each step (GradCache, data parallel, the static model's short path,
the optimizer and its schedule) and `trainer/checkpoint.py` writes and restores checkpoints.

A CUDA out-of-memory error becomes a message naming the settings to lower. The run's row in the
catalog follows its life (running, completed, failed, interrupted); metrics go to
`<ws>/runs/<name>/metrics.jsonl`.

SIGTERM (`kill`, the dashboard's Cancel button, torchrun or a cluster scheduler stopping the
job) stops the run cleanly: the step in progress finishes, every process agrees to stop at the
same step (the flag rides on the per-step metrics all-reduce), a checkpoint of that step is
written, the row is marked `interrupted` and `--resume` continues from there. A second SIGTERM
kills at once. Ctrl-C (KeyboardInterrupt) stops immediately, keeping the last periodic
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from catalog import runs
from catalog.db import Catalog
from catalog.mixtures import MixtureVersion
from catalog.workspace import Workspace
from corpus.console import console, progress
from corpus.errors import KalmixError
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.data import BatchSampler, DataReport, load_mixture, mixture_prompts
from trainer.distributed import Dist, setup_distributed
from trainer.loss import LossOutput
from trainer.model import check_base, default_base, export_model, load_model
from trainer.step import Stepper, clip_grads, lr_factor, make_optimizer

METRICS_FILE = "metrics.jsonl"
OnStep = Callable[[int, dict[str, Any]], None]


# ----------------------------------------------------------------------------- a run


def git_commit() -> str | None:
    """The commit of the kalmix code that trains (with `+dirty` for local changes), if known."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    """The metrics lines of steps up to `upto` (a resumed run drops steps it will redo)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def _oom_message(cfg: TrainConfig, step: int) -> str:
    return (
        f"out of GPU memory at step {step}: lower chunk_size (now {cfg.chunk_size} texts per "
        f"forward; the contrastive batch of {cfg.batch_size} stays the same), or set "
        f"gradient_checkpointing = true, or lower max_length (now {cfg.max_length})"
    )


class RunStopped(KalmixError):
    """The run stopped on SIGTERM after a checkpoint; `--resume` continues it."""


class _StopOnSigterm:
    """Turns the first SIGTERM into a flag the loop checks after each step.

    Only the main thread may install signal handlers; elsewhere (a trainer called from a
    worker thread) SIGTERM keeps its default action.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)  # a second one kills

    def __enter__(self) -> _StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


@dataclass
class TrainResult:
    run: str
    steps: int
    loss: float
    model_path: Path
    summary: dict[str, Any]


def train(
    ws: Workspace,
    *,
    run_name: str,
    mixture: str | None = None,
    cfg: TrainConfig | None = None,
    resume: bool = False,
    on_step: OnStep | None = None,
) -> TrainResult:
    """Train (or with `resume`, continue) run `run_name` on a mixture version and export it.

    Every process of a torchrun job calls this with the same arguments. Inputs are checked
    before the run's catalog row is written, so bad input leaves no row; any failure after
    that marks the row failed (or interrupted, for Ctrl-C). `on_step(step, metrics)` is called
    after each optimizer step on every process.
    """
    d, started = setup_distributed()
    try:
        return _Run(ws, d, run_name, mixture, cfg, resume).execute(on_step)
    finally:
        if started:
            dist.destroy_process_group()


@dataclass
class _Stage:
    """One stage of a run: its mixture, settings, batches and number of steps."""

    index: int
    cfg: TrainConfig
    mv: MixtureVersion
    sampler: BatchSampler
    total: int
    report: DataReport


class _Run:
    def __init__(
        self,
        ws: Workspace,
        d: Dist,
        name: str,
        mixture: str | None,
        cfg: TrainConfig | None,
        resume: bool,
    ) -> None:
        self.ws, self.d, self.name, self.resume = ws, d, name, resume
        self.cat = Catalog.open(ws)
        self.path = runs.run_dir(self.cat, name)
        self.restore_from: Path | None = None
        existing = runs.get_run(self.cat, name)
        if resume:
            if existing is None:
                raise KalmixError(f"nothing to resume: no run {name!r} (start it without --resume)")
            if mixture and mixture not in (existing.mixture_ref, existing.mixture):
                raise KalmixError(
                    f"run {name!r} trains on {existing.mixture_ref}, not {mixture}; drop the "
                    "mixture argument to resume it"
                )
            saved = ckpt.list_checkpoints(self.path)
            self.restore_from = saved[-1] if saved else None
            config = existing.config
            if self.restore_from is not None:
                config = json.loads((self.restore_from / "state.json").read_text())["config"]
            cfg = TrainConfig.from_dict(config)
            mixture = None if cfg.stages else existing.mixture_ref
        elif existing is not None:
            raise KalmixError(
                f"run {name!r} already exists (status {existing.status}): continue it with "
                "--resume, or choose another --out-run"
            )
        cfg = (cfg or TrainConfig()).validate()
        if not cfg.base:
            cfg = cfg.override(base=str(default_base()))
        plan = cfg.stage_configs(mixture)
        check_base(cfg)  # a bad --base fails before the data is read
        self.cfg = cfg
        self.stages = [self._stage(i, ref, stage_cfg) for i, (ref, stage_cfg) in enumerate(plan)]
        self.total = sum(s.total for s in self.stages)
        torch.manual_seed(cfg.seed)
        self.model, self.tokenizer = load_model(cfg, ws.cache_dir)
        for stage in self.stages:
            too_big = [x for x in stage.cfg.matryoshka_dims if x > self.model.dim]
            if too_big:
                raise KalmixError(
                    f"matryoshka_dims {too_big} exceed the model's {self.model.dim} dimensions"
                )
        self.stage = self.stages[0]
        self.step = 0
        self.stage_step = 0
        self.stop_agreed = False
        self.history: list[dict[str, Any]] = []
        self.session = {"start": time.perf_counter(), "steps": 0, "samples": 0, "tokens": 0}

    def _stage(self, index: int, ref: str, cfg: TrainConfig) -> _Stage:
        """Load a stage's mixture and check its batch; all before the run row is written."""
        if cfg.batch_size % self.d.world:
            raise KalmixError(
                f"batch size {cfg.batch_size} does not split over {self.d.world} processes; use "
                f"a multiple of {self.d.world}"
            )
        mv, sources, report = load_mixture(self.cat, ref, cfg)
        if self.d.is_main:
            console.print(report.line(str(mv.ref)))
        sampler = BatchSampler(
            sources,
            batch_size=cfg.batch_size,
            homogeneous_share=cfg.homogeneous_share,
            negatives_per_query=cfg.negatives_per_query,
            seed=cfg.seed,
        )
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * sampler.steps_per_epoch))
        return _Stage(index, cfg, mv, sampler, total, report)

    def _register(self) -> None:
        commit = git_commit()
        if self.resume:
            runs.restart_run(self.cat, self.name, pid=os.getpid(), git_commit=commit)
        else:
            last = self.stages[-1].mv  # the mixture the final model was trained on last
            runs.create_run(
                self.cat,
                self.name,
                mixture=last.name,
                mixture_version=last.version,
                base_model=self.cfg.base,
                config=self.cfg.to_dict(),
                git_commit=commit,
            )

    def execute(self, on_step: OnStep | None) -> TrainResult:
        if self.d.is_main:
            self._register()
        self.d.barrier()
        try:
            with _StopOnSigterm() as self.stop:
                self._loop(on_step)
            if self.step < self.total:
                return self._stopped()
            return self._finish()
        except RunStopped:
            raise
        except KeyboardInterrupt:
            self._mark("interrupted", f"interrupted after step {self.step}")
            raise
        except torch.OutOfMemoryError:
            message = _oom_message(self.stage.cfg, self.step + 1)
            self._mark("failed", message)
            raise KalmixError(message) from None
        except BaseException as err:
            self._mark("failed", f"{type(err).__name__}: {err}")
            raise

    def _stopped(self) -> TrainResult:
        """After SIGTERM: checkpoint the last finished step, mark the row, tell how to resume."""
        saved = ckpt.list_checkpoints(self.path)
        if self.step and not (saved and saved[-1].name == ckpt.step_name(self.step)):
            self._checkpoint()
        message = (
            f"stopped by SIGTERM after step {self.step} of {self.total}; continue with "
            f"`kalmix train --out-run {self.name} --resume`"
        )
        self._mark("interrupted", message)
        raise RunStopped(f"run {self.name} {message}")

    def _mark(self, status: str, error: str) -> None:
        if self.d.is_main:
            runs.update_run(
                self.cat, self.name, status=status, error=error, summary=self._summary()
            )

    def _loop(self, on_step: OnStep | None) -> None:
        d = self.d
        self.model.to(d.device).train()
        restored_stage, restored_state = 0, None
        if self.restore_from is not None:
            restored_state = json.loads((self.restore_from / "state.json").read_text())
            restored_stage = restored_state.get("stage", 0)
            self.step = restored_state["step"]
        metrics = self.path / METRICS_FILE
        self.history = _read_metrics(metrics, self.step)
        if d.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            metrics.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        with progress() if d.is_main else nullcontext() as bar:
            task = bar.add_task(self.name, total=self.total, completed=self.step) if bar else None
            for stage in self.stages[restored_stage:]:
                self.stage, self.stage_step = stage, 0
                self.optimizer = make_optimizer(self.model, stage.cfg, d.device)
                self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                    self.optimizer, lr_factor(stage.cfg, stage.total)
                )
                if restored_state is not None:
                    ckpt.load_checkpoint(
                        self.restore_from,
                        rank=d.rank,
                        model=self.model,
                        optimizer=self.optimizer,
                        scheduler=self.scheduler,
                    )
                    stage.sampler.load_state_dict(restored_state["sampler"])
                    self.stage_step = restored_state.get("stage_step", self.step)
                    restored_state = None
                self._run_stage(stage, on_step, metrics, bar, task)
                if self.stop_agreed:
                    return

    def _run_stage(self, stage: _Stage, on_step: OnStep | None, metrics: Path, bar, task) -> None:
        cfg, d = stage.cfg, self.d
        stepper = Stepper(self.model, self.tokenizer, cfg, d)
        local = cfg.batch_size // d.world
        while self.stage_step < stage.total:
            t0 = time.perf_counter()
            examples = stage.sampler.next_batch()[d.rank * local : (d.rank + 1) * local]
            stepper.step = self.step
            out, tokens = stepper.backward(examples)
            grad_norm = clip_grads(stepper.params, cfg.max_grad_norm, stepper.grad_norm)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.stage_step += 1
            record = self._record(out, tokens, lr, float(grad_norm), time.perf_counter() - t0)
            if d.is_main:
                if self.step % self.cfg.log_every == 0 or self.step == self.total:
                    with metrics.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.update(
                    task, completed=self.step, description=f"{self.name} loss {record['loss']:.4f}"
                )
            if self.step % self.cfg.checkpoint_every == 0 and self.step < self.total:
                self._checkpoint()
            if on_step is not None:
                on_step(self.step, record)
            if self.stop_agreed:
                return

    def _record(
        self, out: LossOutput, tokens: int, lr: float, grad_norm: float, seconds: float
    ) -> dict[str, Any]:
        """This step's metrics over all processes."""
        stats = torch.tensor(
            [
                out.loss.item(),
                float(out.correct.sum()),
                float(out.masked.sum()),
                float(tokens),
                float(self.stop.requested),
            ],
            dtype=torch.float64,
            device=self.d.device,
        )
        if self.d.world > 1:
            dist.all_reduce(stats)
        loss, correct, masked, tokens_all, stop = stats.tolist()
        self.stop_agreed = stop > 0  # any process got SIGTERM: all stop at this step
        self.session["steps"] += 1
        self.session["tokens"] += int(tokens_all)
        batch = self.stage.cfg.batch_size
        self.session["samples"] += batch
        record = {
            "step": self.step,
            "stage": self.stage.index + 1,
            "epoch": self.stage.sampler.epoch,
            "loss": loss / self.d.world,
            "accuracy": correct / batch,
            "masked_per_query": masked / batch,
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": batch / seconds,
            "tokens_per_s": tokens_all / seconds,
            "seconds": seconds,
        }
        self.history.append(record)
        return record

    def _checkpoint(self) -> None:
        ckpt.save_rng(self.path, self.step, self.d.rank)
        self.d.barrier()
        if self.d.is_main:
            ckpt.save_checkpoint(
                self.path,
                self.step,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state={
                    "sampler": self.stage.sampler.state_dict(),
                    "config": self.cfg.to_dict(),
                    "stage": self.stage.index,
                    "stage_step": self.stage_step,
                },
                keep=self.cfg.keep_checkpoints,
            )
            runs.update_run(self.cat, self.name, summary=self._summary())
        self.d.barrier()

    def _summary(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.session["start"]
        last = self.history[-10:]
        return {
            "steps": self.step,
            "total_steps": self.total,
            "stage": self.stage.index + 1,
            "epoch": self.stage.sampler.epoch,
            "loss": last[-1]["loss"] if last else None,
            "loss_last_10": sum(r["loss"] for r in last) / len(last) if last else None,
            "samples_per_s": self.session["samples"] / seconds,
            "tokens_per_s": self.session["tokens"] / seconds,
            "processes": self.d.world,
            "device": self.d.device.type,
            "rows_used": self.stage.report.rows_used,
            "rows_dropped": self.stage.report.dropped,
            "stages": [
                {"mixture": str(st.mv.ref), "steps": st.total, "rows_used": st.report.rows_used}
                for st in self.stages
            ],
        }

    def _finish(self) -> TrainResult:
        model_path = self.path / runs.MODEL_FOLDER
        summary = self._summary()
        if self.d.is_main:
            last = self.stages[-1].cfg
            export_model(
                self.model,
                self.tokenizer,
                model_path,
                prompts=mixture_prompts(
                    [e for st in self.stages for e in st.mv.entries],
                    last.instruction_template if last.query_instructions else None,
                ),
                max_length=last.max_length,
                matryoshka_dims=last.matryoshka_dims,
            )
            summary["model_path"] = str(model_path.relative_to(self.ws.root))
            runs.update_run(self.cat, self.name, status="completed", summary=summary)
            console.print(
                f"train: {' -> '.join(str(st.mv.ref) for st in self.stages)} -> run {self.name}: "
                f"{self.step} steps, loss {summary['loss']:.4f}, "
                f"{summary['samples_per_s']:.1f} samples/s; model at {model_path}"
            )
        self.d.barrier()
        return TrainResult(self.name, self.step, summary["loss"], model_path, summary)
