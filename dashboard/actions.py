"""The writes the dashboard asks for, done by the same `kalmix` commands a user would type.

The app never opens a write connection: creating a mixture runs `kalmix mix create` (which
calls `catalog.mixtures.create_mixture`), training and evaluation start `kalmix train` /
`kalmix eval` as background processes in their own session, so they outlive the page, the
browser tab and the Streamlit server. Their output goes to `<ws>/runs/<name>/*.log`.

Every function here that starts or signals a process first asks `auth.require`: on a
dashboard reachable from other machines, a browser session that has not presented the
token starts nothing, whichever page asked.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from catalog.mixtures import MixtureSpec
from corpus.errors import KalmixError
from corpus.executor import pid_alive
from dashboard import auth

KALMIX = (sys.executable, "-m", "kalmix")
MIX_CREATE_TIMEOUT_S = 3600

# Processes this server started; polled so that finished ones are reaped (no zombies) and
# their exit codes can be shown.
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class Finished:
    command: str
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def shell_line(args: list[str]) -> str:
    """The command as a user would type it (for display and copy-paste)."""
    return "kalmix " + " ".join(shlex.quote(a) for a in args)


def mix_create_args(name: str, spec: MixtureSpec) -> list[str]:
    """`kalmix mix create` arguments for a spec (the builder offers no per-dataset caps)."""
    if spec.caps or spec.cap_shares:
        raise KalmixError("per-dataset caps need a spec file: kalmix mix create NAME --spec FILE")
    args = ["mix", "create", name, "--weighting", str(spec.weighting)]
    if spec.where:
        args += ["--where", spec.where]
    for ref in spec.datasets:
        args += ["--dataset", ref]
    if spec.weighting == "temperature":
        args += ["--tau", repr(float(spec.tau))]
    for dataset, weight in sorted(spec.weights.items()):
        args += ["--weight", f"{dataset}={weight}"]
    for option, value in (("--budget", spec.budget), ("--cap", spec.cap)):
        if value:
            args += [option, str(value)]
    if spec.cap_share:
        args += ["--cap-share", repr(float(spec.cap_share))]
    for dataset, text in sorted(spec.instructions.items()):
        args += ["--instruction", f"{dataset}={text}"]
    args += ["--seed", str(spec.seed), "--allow-repeat" if spec.allow_repeat else "--no-repeat"]
    return args


def _env(**extra: str) -> dict[str, str]:
    """The children's environment: the server's, without the dashboard's token."""
    env = {k: v for k, v in os.environ.items() if k != auth.TOKEN_ENV}
    return {**env, **extra}


def run(root: str, args: list[str], timeout_s: float = MIX_CREATE_TIMEOUT_S) -> Finished:
    """Run a short `kalmix` command to completion and capture what it printed."""
    auth.require(f"Running `{shell_line(args)}`")
    proc = subprocess.run(
        [*KALMIX, "--workspace", root, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=_env(COLUMNS="160", NO_COLOR="1"),
        check=False,
    )
    return Finished(shell_line(args), proc.returncode, (proc.stdout + proc.stderr).strip())


def launch(root: str, args: list[str], log: Path) -> int:
    """Start a long `kalmix` command in the background, output to `log`; return its pid.

    A new session (`start_new_session`) keeps it alive when the server stops and keeps the
    server's Ctrl-C away from it.
    """
    auth.require(f"Starting `{shell_line(args)}`")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"$ {shell_line(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [*KALMIX, "--workspace", root, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=_env(PYTHONUNBUFFERED="1", COLUMNS="160"),
        )
    _children[proc.pid] = proc
    return proc.pid


def exit_code(pid: int) -> int | None:
    """The exit code of a process this server started, None while it runs or if unknown."""
    proc = _children.get(pid)
    return proc.poll() if proc is not None else None


def reap() -> None:
    for proc in list(_children.values()):
        proc.poll()


def alive(pid: int | None) -> bool:
    """A live process that is not one of our children that has exited (a zombie till reaped)."""
    return exit_code(pid) is None and pid_alive(pid)


def cancel(pid: int | None, run_name: str) -> None:
    """SIGTERM the run's process; the trainer records `interrupted` when it stops.

    The pid must still belong to a process whose command line names the run, so a recycled
    pid of an unrelated process is never signalled.
    """
    auth.require(f"Cancelling run {run_name}")
    if not alive(pid):
        raise KalmixError(f"run {run_name} has no live process (pid {pid}); nothing to cancel")
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and run_name.encode() not in cmdline.read_bytes():
        raise KalmixError(
            f"pid {pid} is no longer run {run_name}'s process (its command line does not name "
            "the run); not signalling it"
        )
    os.kill(pid, signal.SIGTERM)
