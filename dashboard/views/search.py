"""Search page: the mixture searches of `kalmix mix search` and the effects of their datasets.

For a searched mixture version: the trials' actual objective against what the search's ridge
regression predicts for them (points near the diagonal mean a ranking that can be trusted; the
cross-validated R² says the same in one number), the proposed weights beside the three
baselines', the validation on fresh seeds, and the per-dataset effects that
`kalmix mix attribute` stored, one bar chart per task-type mean. A form starts a new search as
a background `kalmix mix search` process (`actions.launch`), whose log is
`searches/NAME/launch.log`; a killed one resumes when started again with the same settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from catalog.versions import check_name
from catalog.vocabulary import ATTRIBUTION_UNITS
from dashboard import actions, auth, data, ui

root = ui.root()
st.title("Search")


def start_form() -> None:
    """Start `kalmix mix search` in the background with the settings chosen here."""
    left, right = st.columns(2)
    name = left.text_input("mixture name", value="searched", key="search_name")
    where = right.text_input("datasets (WHERE)", value="not is_eval", key="search_where")
    a, b, c, d = st.columns(4)
    trials = a.number_input("trials", min_value=4, value=24, step=1, key="search_trials")
    budget = b.number_input("budget (rows)", min_value=1, value=20_000, key="search_budget")
    seeds = c.number_input("seeds", min_value=1, value=2, step=1, key="search_seeds")
    objective = d.text_input("objective", value="mean", key="search_objective")
    args = ["mix", "search", name, "--where", where, "--trials", str(int(trials)),
            "--budget", str(int(budget)), "--seeds", str(int(seeds)), "--objective", objective]  # fmt: skip
    st.code(actions.shell_line(args), language="bash")
    if st.button("Start search", type="primary", key="search_start"):
        if not auth.authorized():
            st.error(auth.refusal("Starting kalmix mix search"), icon=":material/lock:")
            return
        check_name(name, "mixture")
        log = Path(root) / "searches" / name / "launch.log"
        pid = actions.launch(root, args, log)
        st.success(f"started `{actions.shell_line(args)}` (pid {pid}); log: {log}")


def scatter(record: dict) -> go.Figure:
    """Each trial's actual objective against the model's prediction for its weights."""
    model = record["model"]
    names = list(model["coef"])
    coef = np.array([model["coef"][n] for n in names])
    rows = [
        {"trial": t["trial"], "kind": t["kind"], "actual": t["objective"],
         "predicted": float(np.array([t["weights"][n] for n in names]) @ coef + model["intercept"])}
        for t in record["trials"] if t["objective"] is not None
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    fig = px.scatter(frame, x="predicted", y="actual", color="kind", hover_data=["trial"])
    low, high = (
        frame[["predicted", "actual"]].min().min(),
        frame[["predicted", "actual"]].max().max(),
    )
    fig.add_shape(type="line", x0=low, y0=low, x1=high, y1=high, line={"dash": "dot"})
    fig.update_layout(height=380, margin={"t": 10, "b": 0})
    return fig


def weights(record: dict) -> go.Figure:
    """The proposed weights beside the baselines', one group of bars per dataset."""
    rows = [
        {"mixture": "proposed", "dataset": k, "weight": v} for k, v in record["proposed"].items()
    ]
    for t in record["trials"]:
        if t["kind"] != "dirichlet":
            rows += [
                {"mixture": t["kind"], "dataset": k, "weight": v} for k, v in t["weights"].items()
            ]
    fig = px.bar(pd.DataFrame(rows), x="dataset", y="weight", color="mixture", barmode="group")
    fig.update_layout(height=380, margin={"t": 10, "b": 0})
    return fig


def effects(table: pd.DataFrame) -> go.Figure:
    """Effect of each unit (mixture minus mixture without it), one panel per metric."""
    fig = px.bar(table, x="unit", y="effect", color="method", facet_col="metric", facet_col_wrap=3)
    fig.update_layout(height=320 * ((table["metric"].nunique() + 2) // 3), margin={"t": 30})
    return fig


with ui.guard("reading searches"):
    with st.expander("Start a search", expanded=False):
        start_form()
    first = data.search_view(root, None)
    if not first.refs:
        st.info(
            'No search yet. Start one above, or run `kalmix mix search NAME --where "not '
            'is_eval" --trials 24 --budget 20000`: it trains the static proxy on each trial '
            "weighting and registers the predicted best as NAME@vN."
        )
        st.stop()
    ref = st.selectbox("searched mixture", first.refs, key="search_ref")
    view = data.search_view(root, ref)
    record = view.record
    model, val = record["model"], record["validation"]
    cols = st.columns(4)
    cols[0].metric("trials", f"{len(record['trials'])} x {record['seeds']} seeds")
    cols[1].metric(
        "cross-validated R²", "n/a" if model["cv_r2"] is None else f"{model['cv_r2']:.3f}"
    )
    cols[2].metric(f"predicted {record['objective']}", f"{record['predicted']:.4f}")
    diff = val["diff_mean"]
    cols[3].metric(f"proposed - {val['baseline']}", "n/a" if diff is None else f"{diff:+.4f}")
    left, right = st.columns(2)
    left.subheader("trials: predicted vs actual")
    left.plotly_chart(scatter(record), key="search_scatter")
    right.subheader("proposed weights and baselines")
    right.plotly_chart(weights(record), key="search_weights")
    st.subheader("effects per dataset")
    table = view.effects.to_pandas()
    if table.empty:
        st.info(f"No attribution stored yet: run `kalmix mix attribute {ref}` (or --by category).")
    else:
        kinds = [k for k in ATTRIBUTION_UNITS if k in set(table["unit_kind"])]
        kind = st.radio("by", kinds, horizontal=True, key="search_by")
        st.plotly_chart(effects(table[table["unit_kind"] == kind]), key="search_effects")
