"""Runs page: start training or evaluation in the background, watch status, curves and logs
live, cancel.

Starting a run launches `kalmix train` (or `kalmix eval`) as its own process through
`dashboard.actions`, exactly the command a user would type, so closing the page never stops
it. The trainer records the run in the catalog (`runs`), its metrics in
`<ws>/runs/<name>/metrics.jsonl` and its output in `stdout.log`; this page only reads them.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pyarrow.compute as pc
import streamlit as st

from catalog.versions import check_name
from dashboard import actions, auth, data, ui

root = ui.root()
st.title("Runs")
STATUS_ICON = {
    "running": ":material/progress_activity:",
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "interrupted": ":material/cancel:",
}
CURVES = (("loss", "loss"), ("samples_per_s", "throughput (samples/s)"), ("lr", "learning rate"))


@st.cache_data(ttl=60, show_spinner=False)
def command_help(command: str) -> actions.Finished:
    """`kalmix COMMAND --help`: whether this installation has the command, and its options."""
    return actions.run(root, [command, "--help"], timeout_s=120)


def train_args(view: data.RunsView, runs: pd.DataFrame) -> tuple[str, list[str]] | None:
    """`kalmix train` arguments from the form (the trainer's defaults where left empty)."""
    if not view.mixture_refs:
        st.info("Training needs a mixture version: create one on the Mixtures page first.")
        return None
    ref = st.selectbox("mixture version", view.mixture_refs, key="train_mix")
    default = f"{ref.replace('@', '-')}-{time.strftime('%m%d-%H%M')}"
    name = st.text_input("run name", value=default, key="train_name")
    base = st.text_input(
        "base model: a local folder or .gguf (empty: the trainer's default, MiniLM)",
        key="train_base",
    )
    c1, c2, c3 = st.columns(3)
    steps = c1.number_input("max steps (0: by epochs)", 0, None, 0, 100, key="train_steps")
    batch = c2.number_input("batch size (0: default 64)", 0, None, 0, 8, key="train_batch")
    lr = c3.number_input(
        "learning rate (0: default 1e-5)", 0.0, 1.0, 0.0, format="%g", key="train_lr"
    )
    extra = st.text_input(
        "more options, as on the command line", key="train_extra", placeholder="--epochs 2"
    )
    args = ["train", ref, "--out-run", name]
    for option, value in (("--base", base), ("--max-steps", steps), ("--batch-size", batch)):
        if value:
            args += [option, str(value)]
    if lr:
        args += ["--lr", repr(float(lr))]
    return name, [*args, *shlex.split(extra)]


def eval_args(runs: pd.DataFrame) -> tuple[str, list[str]] | None:
    done = runs[(runs["kind"] == "train") & (runs["status"] == "completed")]["name"].tolist()
    if not done:
        st.info("Evaluation needs a completed training run.")
        return None
    name = st.selectbox("run to evaluate", done, key="eval_run")
    suite = st.selectbox("suite", ["local", "official", "all"], key="eval_suite")
    extra = st.text_input(
        "more options, as on the command line", key="eval_extra", placeholder="--tasks STSB,LCQMC"
    )
    return name, ["eval", name, "--suite", suite, *shlex.split(extra)]


def start_form(kind: str, view: data.RunsView, runs: pd.DataFrame) -> None:
    """The form that launches `kalmix train` or `kalmix eval` in the background."""
    if not auth.authorized():
        st.error(auth.refusal(f"Starting kalmix {kind}"), icon=":material/lock:")
        return
    with st.spinner(f"reading kalmix {kind} --help ..."):
        helped = command_help(kind)
    if not helped.ok:
        last = helped.output.strip().splitlines()[-1:] or [""]
        st.warning(
            f"This kalmix installation has no working `kalmix {kind}` command (`kalmix {kind} "
            f"--help` says: {last[0]}), so it cannot be started from here."
        )
        return
    with st.expander(f"all options of kalmix {kind}"):
        st.code(helped.output)
    picked = train_args(view, runs) if kind == "train" else eval_args(runs)
    if picked is None:
        return
    name, args = picked
    st.code(actions.shell_line(args), language="bash")
    if st.button(f"Start kalmix {kind}", type="primary", key=f"start_{kind}"):
        check_name(name, "run")
        if kind == "train" and (name in set(runs["name"]) or data.run_dir(root, name).exists()):
            st.error(f"a run named {name!r} exists already; choose another name")
            return
        log = data.run_dir(root, name) / ("stdout.log" if kind == "train" else "eval.log")
        pid = actions.launch(root, args, log)
        st.session_state.setdefault("launched", []).append(
            {"kind": kind, "run": name, "pid": pid, "log": str(log)}
        )
        st.session_state["follow_run"] = name  # shown as soon as the catalog lists it
        st.cache_data.clear()
        st.rerun()


@st.dialog("Start a run", width="large")
def start_dialog(kind: str, view: data.RunsView, runs: pd.DataFrame) -> None:
    with ui.guard(f"starting kalmix {kind}"):
        start_form(kind, view, runs)


def launched_panel(known: set[str]) -> None:
    """Processes this session started, until the trainer has registered their run.

    While one is starting (its process alive, its run not in the catalog yet) this panel
    re-reads the runs every 2 s; when the run appears (or the process ends) the whole page
    reruns, so the new run is listed, selected and watched without a manual refresh.
    """
    actions.reap()
    items = st.session_state.get("launched", [])[-5:]
    pending = [
        i
        for i in items
        if i["kind"] == "train" and i["run"] not in known and actions.exit_code(i["pid"]) is None
    ]

    @st.fragment(run_every=2 if pending else None)
    def panel() -> None:
        actions.reap()
        listed = set(data.runs_view(root).runs.column("name").to_pylist()) if pending else known
        for item in items:
            code = actions.exit_code(item["pid"])
            state = "running" if code is None else f"exited with code {code}"
            if item["run"] not in listed and code is None:
                state = "starting (waiting for it to register the run)"
            st.caption(f"kalmix {item['kind']} {item['run']} (pid {item['pid']}): {state}")
            if code:
                st.code(data.log_tail(Path(item["log"]))[-3000:])
        if any(i["run"] in listed or actions.exit_code(i["pid"]) is not None for i in pending):
            st.rerun()

    panel()


def curves(name: str) -> None:
    path = data.run_dir(root, name) / "metrics.jsonl"
    size = data.file_size(path)
    table = data.metrics(str(path), size).to_pandas() if size > 0 else pd.DataFrame()
    if table.empty or "step" not in table:
        st.info(f"No metrics yet (the trainer writes them to {path}).")
        return
    cols = st.columns(3)
    for col, (metric, title) in zip(cols, CURVES, strict=True):
        if metric in table:
            fig = go.Figure(go.Scatter(x=table["step"], y=table[metric], mode="lines"))
            fig.update_layout(title=title, xaxis_title="step", margin={"t": 40, "b": 0}, height=260)
            fig.update_yaxes(exponentformat="e" if metric == "lr" else "none")
            col.plotly_chart(fig, key=f"curve_{metric}")
    last = table.iloc[-1].to_dict()
    numbers = [k for k, v in last.items() if k != "step" and isinstance(v, int | float)]
    st.caption(f"step {int(last['step'])}: " + " · ".join(f"{k} {last[k]:.4g}" for k in numbers))


def run_detail(run: dict) -> None:
    name, status = run["name"], run["status"]
    icon = STATUS_ICON.get(status, ":material/help:")
    alive = actions.alive(run["pid"])
    st.subheader(f"{name}", anchor=False)
    st.markdown(
        f"{icon} **{status}** · {run['kind']} · mixture `{run['mixture']}` · base "
        f"`{run['base_model']}` · {run['seconds'] or 0:,.0f} s"
    )
    if status == "failed":
        st.error(
            f"Run {name} failed: {run['error'] or 'no error recorded'}. The end of its log is "
            "below; fix the cause and start a new run.",
            icon=":material/error:",
        )
    elif status == "running" and not alive:
        st.warning(
            f"Run {name} is recorded as running but its process (pid {run['pid']}) is gone: it "
            "was killed before it could record how it ended. Its log below shows how far it got."
        )
    elif status == "interrupted":
        st.info(
            f"Run {name} was stopped: {run['error'] or 'interrupted'}. Continue it from its last "
            f"checkpoint with `kalmix train --out-run {name} --resume`."
        )
    if status == "running" and alive:
        if st.button("Cancel run", icon=":material/stop:", key=f"cancel_{name}"):
            if not auth.authorized():
                st.error(auth.refusal(f"Cancelling run {name}"), icon=":material/lock:")
            else:
                actions.cancel(run["pid"], name)
                st.toast(f"sent SIGTERM to {name} (pid {run['pid']})")
    curves(name)
    for log_name in ("stdout.log", "eval.log"):
        text = data.log_tail(data.run_dir(root, name) / log_name)
        if text:
            st.caption(f"{log_name} (end)")
            st.code(text[-6000:], language="log")
    if run["summary"]:
        st.caption("summary")
        st.code(run["summary"], language="json")


with ui.guard("reading runs"):
    view = data.runs_view(root)
    runs = view.runs.to_pandas()
    launched_panel(set(runs["name"]))
    new_train, new_eval = st.columns(2)
    if new_train.button("Start training", icon=":material/play_arrow:", key="open_train"):
        start_dialog("train", view, runs)
    if new_eval.button("Start evaluation", icon=":material/science:", key="open_eval"):
        start_dialog("eval", view, runs)
    if runs.empty:
        st.info(
            "No runs yet. Start one with the button above, or from a terminal: "
            "`kalmix train MIXTURE@vN --base PATH --out-run NAME`."
        )
        st.stop()
    counts = runs["status"].value_counts().to_dict()
    st.caption(" · ".join(f"{counts[s]} {s}" for s in sorted(counts)))
    st.dataframe(
        runs[["name", "kind", "status", "mixture", "base_model", "started_at", "seconds", "error"]],
        hide_index=True,
        key="runs_table",
        column_config={"seconds": st.column_config.NumberColumn(format="%.0f")},
    )
    names = runs["name"].tolist()
    asked = st.query_params.get("run")
    follow = st.session_state.get("follow_run")
    if follow in names:  # a run this session just started: select it once
        st.session_state["run_pick"] = st.session_state.pop("follow_run")
    chosen = st.selectbox(
        "run", names, index=names.index(asked) if asked in names else 0, key="run_pick"
    )
    run = view.runs.filter(pc.equal(view.runs.column("name"), chosen)).to_pylist()[0]

    watching = run["status"] == "running" and actions.alive(run["pid"])

    @st.fragment(run_every=2 if watching else None)
    def live() -> None:
        with ui.guard(f"showing run {chosen}"):
            fresh = data.runs_view(root).runs
            current = fresh.filter(pc.equal(fresh.column("name"), chosen)).to_pylist()
            run_detail(current[0] if current else run)

    live()
