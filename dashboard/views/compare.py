"""Compare page: mixture versions (through their runs) and reference models x MTEB tasks.

The per-task numbers are `catalog.scores.compare_table`'s (what `kalmix eval compare` prints):
each task's main score from the latest evaluation, full splits and sampled ones
(`kalmix eval run --limit N`, what `make demo` runs) in separate rows labelled by their
`scores` column, so a model evaluated both ways has two rows and no mean mixes the two
(`data.compare`). Means per task type and overall are left empty when a row lacks one of
their tasks. Shown x100; deltas are against the chosen baseline row, column by column.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data, ui

root = ui.root()
st.title("Compare")
DEFAULT_RUNS = 8
RADAR_MAX = 12
LABELS = data.LABEL_COLUMNS


def row_labels(table: pd.DataFrame) -> list[str]:
    """`run (mixture@vN)` for runs, the model name otherwise, `· sampled` for sampled rows;
    unique."""
    labels, seen = [], set()
    for r in table.itertuples():
        label = f"{r.model} ({r.mixture})" if isinstance(r.mixture, str) else r.model
        if r.scores != data.FULL_SPLIT:
            label = f"{label} · sampled"
        if label in seen:
            label = f"{label} [{r.kind}]"
        seen.add(label)
        labels.append(label)
    return labels


def heat_map(grid: pd.DataFrame, deltas: bool) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(dtype=float),
            x=grid.columns.tolist(),
            y=grid.index.tolist(),
            text=grid.round(1).to_numpy(),
            texttemplate="%{text}",
            colorscale="RdBu" if deltas else "Viridis",
            zmid=0 if deltas else None,
            colorbar={"title": "delta" if deltas else "score"},
        )
    )
    fig.update_layout(margin={"t": 10, "b": 0}, height=140 + 28 * len(grid))
    fig.update_xaxes(side="top")
    fig.update_yaxes(autorange="reversed")
    return fig


def radar(table: pd.DataFrame, type_cols: list[str]) -> go.Figure:
    fig = go.Figure()
    theta = [c.removeprefix("mean_") for c in type_cols]
    for label in table.index[:RADAR_MAX]:
        values = table.loc[label, type_cols].tolist()
        fig.add_trace(go.Scatterpolar(r=values + values[:1], theta=theta + theta[:1], name=label))
    fig.update_layout(polar={"radialaxis": {"visible": True}}, margin={"t": 30, "b": 0}, height=480)
    return fig


with ui.guard("reading scores"):
    full = data.compare(root)
    if full.table.num_rows == 0:
        st.info(
            "No scores yet. Evaluate a training run with `kalmix eval RUN` (or from the Runs "
            "page; `--limit N` for a quick sampled check), and import the published scores of "
            "reference models (KaLM, bge, e5, MiniLM) with "
            "`kalmix eval import-reference ../shared/data/reference_scores.csv`."
        )
        st.stop()
    types = sorted(set(full.task_types.values()))
    c1, c2 = st.columns([3, 1])
    chosen_types = c2.multiselect("task types", types, default=types, key="cmp_types")
    if not chosen_types:
        st.info("Choose at least one task type.")
        st.stop()
    view = full
    if set(chosen_types) != set(types):  # means over the chosen tasks only
        tasks = [t for t, k in full.task_types.items() if k in chosen_types]
        view = data.compare(root, tuple(sorted(tasks)))
    table = view.table.to_pandas()
    table.index = row_labels(table)
    runs = table.index[table["kind"] != "reference"].tolist()
    references = table.index[table["kind"] == "reference"].tolist()
    chosen = c1.multiselect(
        "rows: runs (with their mixture version), evaluated models, reference models",
        table.index.tolist(),
        default=runs[:DEFAULT_RUNS] + references,
        key="cmp_rows",
    )
    if not chosen:
        st.info("Choose at least one row.")
        st.stop()
    if not runs:
        st.info(
            "Only reference models have scores so far: evaluate a run with `kalmix eval RUN` to "
            "compare your mixtures against them."
        )
    table = table.loc[chosen]
    numbers = [c for c in table.columns if c not in LABELS]
    table[numbers] = table[numbers] * 100
    fmt = {c: st.column_config.NumberColumn(format="%.2f") for c in numbers}
    fmt["scores"] = st.column_config.TextColumn(width="medium")
    st.markdown("#### Scores (x100)")
    st.caption(
        "`mean` is over every task shown, `mean_<type>` over the tasks of that type; a mean is "
        "empty when the row lacks one of its tasks. Rows marked *sampled* were evaluated on a "
        "sample of each split (`kalmix eval run --limit N`): their means are over sampled "
        "scores only, never mixed with full-split ones, and beside full-split rows (the "
        "published reference scores are all full splits) they are estimates."
    )
    st.dataframe(table.drop(columns="model"), column_config=fmt, key="cmp_scores")

    baseline = st.selectbox("baseline row for deltas", chosen, key="cmp_base")
    deltas = table[numbers] - table.loc[baseline, numbers]
    st.markdown(f"#### Delta vs {baseline}")
    st.dataframe(
        deltas,
        column_config={c: st.column_config.NumberColumn(format="%+.2f") for c in numbers},
        key="cmp_deltas",
    )

    show = st.segmented_control(
        "heat map of", ["scores", "deltas"], default="scores", key="cmp_heat"
    )
    grid = deltas if show == "deltas" else table[numbers]
    st.plotly_chart(heat_map(grid, show == "deltas"), key="cmp_heatmap")

    type_cols = [c for c in numbers if c.startswith("mean_")]
    st.markdown("#### Task-type means")
    if len(type_cols) < 3:
        st.caption("The radar chart needs scores in at least three task types.")
    else:
        if len(table) > RADAR_MAX:
            st.caption(f"The first {RADAR_MAX} rows are drawn.")
        st.plotly_chart(radar(table, type_cols), key="cmp_radar")
