"""Mixtures page: build a mixture with a live preview, browse versions, diff two versions.

The preview is `catalog.mixtures.plan_mixture` (reads only); "Create" runs
`kalmix mix create` with the same spec, so the version is made by exactly the code a user
runs in a terminal, and the app itself never writes the catalog.
"""

from __future__ import annotations

import json

import plotly.graph_objects as go
import streamlit as st

from catalog import mixtures
from catalog.mixtures import WEIGHTINGS, ManifestEntry, MixtureSpec
from dashboard import actions, auth, data, ui

root = ui.root()
st.title("Mixtures")


def composition_charts(entries: list[ManifestEntry], key: str) -> None:
    cols = st.columns(3)
    for col, by in zip(cols, ("task_type", "category", "language"), strict=True):
        table = mixtures.composition(entries, by).to_pandas()
        top = table.head(25)
        fig = go.Figure(
            go.Pie(labels=top[by], values=top["rows"], hole=0.45, textinfo="percent+label")
        )
        fig.update_traces(textposition="inside")
        fig.update_layout(
            title=f"by {by}", margin={"t": 40, "b": 0, "l": 0, "r": 0}, height=300, showlegend=False
        )
        col.plotly_chart(fig, key=f"{key}_{by}")


def filters_where(datasets) -> str | None:
    """A WHERE clause from the picker widgets (shown, and stored in the spec); None if unset."""
    c1, c2, c3, c4 = st.columns([2, 3, 2, 1])
    types = c1.multiselect("task types", sorted(datasets["task_type"].unique()), key="mb_types")
    cats = c2.multiselect("categories", sorted(datasets["category"].unique()), key="mb_cats")
    langs = sorted({x for v in datasets["languages"].dropna() for x in v.split(",") if x})
    chosen = c3.multiselect("any of these languages", langs, key="mb_langs")
    min_rows = c4.number_input("min rows", min_value=0, step=100, key="mb_min_rows")
    clauses = []
    if types:
        clauses.append(f"task_type IN ({ui.sql_list(types)})")
    if cats:
        clauses.append(f"category IN ({ui.sql_list(cats)})")
    if chosen:
        clauses.append(f"list_has_any(languages, [{ui.sql_list(chosen)}])")
    if min_rows:
        clauses.append(f"rows >= {int(min_rows)}")
    return " AND ".join(clauses) or None


def build_tab(view: data.MixturesView, preview: bool) -> None:
    """The builder's widgets always render (so their state survives a tab switch); the
    preview is computed only while the tab is open."""
    datasets = view.datasets.to_pandas()
    if datasets.empty:
        st.info(
            "There are no training datasets to mix yet (evaluation sets are never mixed). "
            "Ingest some with `kalmix ingest FILE --name NAME --category CATEGORY`."
        )
        return
    mode = st.radio(
        "select datasets by",
        ["filters", "SQL WHERE", "picking them"],
        horizontal=True,
        key="mb_mode",
    )
    spec: dict = {}
    if mode == "filters":
        spec["where"] = filters_where(datasets)
        if spec["where"]:
            st.code(spec["where"], language="sql")
    elif mode == "SQL WHERE":
        spec["where"] = st.text_input(
            "WHERE over the datasets view",
            value="task_type = 'retrieval'",
            key="mb_where",
            help="The latest version of each match is pinned; is_eval datasets never match.",
        )
    else:
        spec["datasets"] = st.multiselect(
            "datasets (latest version pinned)", datasets["name"].tolist(), key="mb_datasets"
        )

    c1, c2, c3, c4, c5, c6 = st.columns(6)
    weightings = list(WEIGHTINGS) if mode == "picking them" else list(WEIGHTINGS[:3])
    spec["weighting"] = c1.selectbox(
        "weighting",
        weightings,
        key="mb_weighting",
        help="proportional: rows; uniform: equal; temperature: rows^(1/tau); explicit: yours "
        "(when picking datasets).",
    )
    if spec["weighting"] == "temperature":
        spec["tau"] = c2.number_input("tau", 0.1, 100.0, 2.0, 0.5, key="mb_tau")
    budget = c3.number_input("budget (rows, 0 = none)", 0, None, 0, 1000, key="mb_budget")
    cap = c4.number_input("cap per dataset (0 = none)", 0, None, 0, 1000, key="mb_cap")
    cap_share = c5.number_input("cap share (0 = none)", 0.0, 1.0, 0.0, 0.05, key="mb_cap_share")
    spec["seed"] = int(c6.number_input("seed", 0, None, 0, 1, key="mb_seed"))
    spec["allow_repeat"] = st.toggle(
        "allow repeats (upsample small datasets to meet the budget)", key="mb_repeat"
    )
    spec.update(budget=int(budget) or None, cap=int(cap) or None, cap_share=cap_share or None)
    if spec["weighting"] == "explicit" and spec.get("datasets"):
        edited = st.data_editor(
            {"dataset": spec["datasets"], "weight": [1.0] * len(spec["datasets"])},
            disabled=["dataset"],
            key="mb_weights",
            hide_index=True,
        )
        spec["weights"] = dict(zip(edited["dataset"], map(float, edited["weight"]), strict=True))

    if not spec.get("where") and not spec.get("datasets"):
        st.info(
            "Choose datasets (a filter, a WHERE such as `true` for all, or a list) to see the "
            "mixture."
        )
        return
    if not preview:
        return
    try:
        checked = MixtureSpec.from_dict(spec)
        entries = data.plan(root, json.dumps(checked.to_dict(), sort_keys=True))
    except Exception as err:  # a spec being edited is often invalid: say why, no traceback
        st.warning(data.error_text(err))
        return
    total = sum(e.rows_taken for e in entries)
    m1, m2, m3 = st.columns(3)
    m1.metric("datasets", len(entries))
    m2.metric("rows", f"{total:,}")
    m3.metric("rows available", f"{sum(e.rows_available for e in entries):,}")
    composition_charts(entries, "plan")
    st.dataframe(mixtures.manifest_table(entries), hide_index=True, key="plan_manifest")

    st.markdown("#### Create this version")
    name = st.text_input("mixture name (an existing name gets its next version)", key="mb_name")
    if not name:
        return
    args = actions.mix_create_args(name, checked)
    st.code(actions.shell_line(args), language="bash")
    if st.button("Create", type="primary", key="mb_create"):
        if not auth.authorized():
            st.error(auth.refusal("Creating a mixture"), icon=":material/lock:")
            return
        with st.spinner(f"kalmix mix create {name} ..."):
            done = actions.run(root, args)
        if done.ok:
            st.cache_data.clear()
            st.success(done.output.splitlines()[-1] if done.output else f"created {name}")
        else:
            st.error(done.output.splitlines()[-1] if done.output else "kalmix mix create failed")
            st.code(done.output)


def versions_tab(view: data.MixturesView) -> None:
    if not view.refs:
        st.info("No mixtures yet: build one in the Build tab, or run `kalmix mix create`.")
        return
    st.dataframe(view.mixtures, hide_index=True, key="mixture_list")
    ref = st.selectbox("mixture version", view.refs, key="mv_ref")
    mv = data.mixture(root, ref)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("rows", f"{mv.rows:,}")
    m2.metric("datasets", len(mv.entries))
    m3.metric("content hash", mv.content_hash[:12])
    m4.metric("created", f"{mv.created_at:%Y-%m-%d %H:%M}" if mv.created_at else "?")
    spec = {k: v for k, v in mv.spec.items() if v not in (None, [], {}, False)}
    st.code(json.dumps(spec, ensure_ascii=False, indent=1), language="json")
    composition_charts(mv.entries, "version")
    st.dataframe(mixtures.manifest_table(mv.entries), hide_index=True, key="version_manifest")


def diff_tab(view: data.MixturesView) -> None:
    if len(view.refs) < 2:
        st.info(f"A diff needs two mixture versions; there are {len(view.refs)}.")
        return
    c1, c2 = st.columns(2)
    a = c1.selectbox("from", view.refs, index=1, key="diff_a")
    b = c2.selectbox("to", view.refs, index=0, key="diff_b")
    table = data.mixture_diff(root, a, b).to_pandas()
    counts = table["change"].value_counts().to_dict()
    st.caption(
        ", ".join(f"{counts.get(c, 0)} {c}" for c in ("added", "removed", "changed", "same"))
        + f"; rows {int(table['rows_from'].sum()):,} -> {int(table['rows_to'].sum()):,}"
    )
    show_same = st.toggle("show unchanged datasets", key="diff_same")
    shown = table if show_same else table[table["change"] != "same"]
    st.dataframe(shown, hide_index=True, key="diff_table")


with ui.guard("reading mixtures"):
    view = data.mixtures_view(root)
    build, versions, diff = st.tabs(["Build", "Versions", "Diff"], key="mix_tab", on_change="rerun")
    with build, ui.guard("building"):
        build_tab(view, preview=bool(build.open))
    if versions.open:
        with versions, ui.guard("showing the version"):
            versions_tab(view)
    if diff.open:
        with diff, ui.guard("diffing"):
            diff_tab(view)
