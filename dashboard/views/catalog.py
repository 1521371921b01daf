"""Catalog page: the task taxonomy with its gaps, every dataset, and rows by language."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import data, ui

STATUS_COLORS = {"has data": "#2e7d32", "empty": "#bdbdbd"}


def category_tree(cats) -> go.Figure:
    """Task type -> category tiles of equal area, green with data, grey when empty (gaps)."""
    types = sorted(cats["task_type"].unique())
    hover = [
        f"{r.name}<br>{r.domain or ''}<br>{r.datasets} datasets, {r.rows:,} rows"
        for r in cats.itertuples()
    ]
    fig = go.Figure(
        go.Treemap(
            ids=[f"type:{t}" for t in types] + [f"cat:{n}" for n in cats["name"]],
            labels=[*types, *cats["name"]],
            parents=["" for _ in types] + [f"type:{t}" for t in cats["task_type"]],
            values=[0 for _ in types] + [1] * len(cats),
            marker_colors=["#eceff1" for _ in types] + cats["status"].map(STATUS_COLORS).tolist(),
            hovertext=[f"{t}" for t in types] + hover,
            hoverinfo="text",
        )
    )
    fig.update_layout(margin={"t": 10, "l": 0, "r": 0, "b": 0}, height=420)
    return fig


def categories_tab(view: data.CatalogView) -> None:
    """The taxonomy as a tree of equal tiles (grey = empty: a gap to fill) and a table."""
    cats = view.categories.to_pandas()
    cats["status"] = cats["datasets"].map(lambda n: "has data" if n else "empty")
    left, mid, right = st.columns([2, 1, 2])
    types = left.multiselect("task type", sorted(cats["task_type"].unique()), key="cat_types")
    only_empty = mid.toggle("only empty categories", key="cat_empty", help="Gaps to fill.")
    search = right.text_input("search name, domain or description", key="cat_search")
    shown = cats
    if types:
        shown = shown[shown["task_type"].isin(types)]
    if only_empty:
        shown = shown[shown["datasets"] == 0]
    if search:
        text = shown["name"] + " " + shown["domain"].fillna("") + " " + shown["description"]
        shown = shown[text.str.contains(search, case=False, regex=False)]
    st.caption(
        f"{len(shown)} categories, {int((shown['datasets'] == 0).sum())} empty (grey: gaps "
        "to fill). Every category gets the same area; hover for its datasets and rows."
    )
    if len(shown):
        st.plotly_chart(category_tree(shown), key="cat_tree")
        by_type = shown.groupby(["task_type", "status"]).size().unstack(fill_value=0)
        bars = go.Figure(
            [
                go.Bar(x=by_type.index, y=by_type[status], name=status, marker_color=color)
                for status, color in STATUS_COLORS.items()
                if status in by_type
            ]
        )
        bars.update_layout(barmode="stack", margin={"t": 10, "b": 0}, height=260)
        st.plotly_chart(bars, key="cat_bars")
    st.dataframe(
        shown[["name", "task_type", "domain", "languages", "datasets", "rows", "status"]],
        hide_index=True,
        key="cat_table",
    )


def datasets_tab(view: data.CatalogView) -> None:
    """Every dataset (latest version), filtered; selecting a row opens the dataset page."""
    counts = view.counts
    if view.where_error:
        st.warning(view.where_error)
    elif counts["datasets"] == 0:
        st.info("No datasets yet: `kalmix ingest FILE --name NAME --category CATEGORY`.")
    else:
        table = view.datasets.to_pandas()
        c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 2, 1])
        search = c1.text_input("search name or source", key="ds_search")
        types = c2.multiselect("task type", sorted(table["task_type"].unique()), key="ds_types")
        categories = c3.multiselect(
            "category", sorted(table["category"].unique()), key="ds_categories"
        )
        languages = sorted({x for v in table["languages"].dropna() for x in v.split(",") if x})
        chosen = c4.multiselect("any of these languages", languages, key="ds_languages")
        min_rows = c5.number_input("min rows", min_value=0, step=1000, key="ds_min_rows")
        if search:
            hay = table["name"] + " " + table["source"].fillna("")
            table = table[hay.str.contains(search, case=False, regex=False)]
        if types:
            table = table[table["task_type"].isin(types)]
        if categories:
            table = table[table["category"].isin(categories)]
        if chosen:
            wanted = set(chosen)
            has = table["languages"].fillna("").map(lambda v: bool(wanted & set(v.split(","))))
            table = table[has]
        if min_rows:
            table = table[table["rows"] >= min_rows]
        if table.empty:
            st.info("No dataset matches these filters.")
        else:
            st.caption(
                f"{len(table):,} datasets, {int(table['rows'].sum()):,} rows. "
                "Select a row to open the dataset."
            )
            picked = st.dataframe(
                table,
                hide_index=True,
                on_select="rerun",
                selection_mode="single-row",
                key="ds_table",
            )
            if picked.selection.rows:
                name = table.iloc[picked.selection.rows[0]]["name"]
                st.switch_page("views/dataset.py", query_params={"name": name})


def languages_tab(view: data.CatalogView) -> None:
    langs = view.languages.to_pandas()
    if langs.empty:
        st.info("No rows yet: languages appear once datasets are ingested.")
    else:
        top = langs.head(40)
        fig = go.Figure(go.Bar(x=top["language"], y=top["rows"], text=top["datasets"]))
        fig.update_traces(
            hovertemplate="%{x}: %{y:,} rows in %{text} datasets", textposition="none"
        )
        fig.update_layout(margin={"t": 10, "b": 0}, height=320)
        st.plotly_chart(fig, key="lang_bars")
        st.dataframe(langs, hide_index=True, key="lang_table")


root = ui.root()
st.title("Catalog")

with st.expander("filter datasets with SQL", expanded=bool(st.session_state.get("ds_where"))):
    where = st.text_input(
        "WHERE over the datasets view",
        key="ds_where",
        placeholder="list_contains(languages, 'zh') and rows > 1000",
        help="Columns: name, category, task_type, domain, language (most common), languages "
        "(list), rows, latest_version, tags (list), source, is_eval, last_operation, stats "
        "(JSON), created_at, updated_at.",
    )
    include_eval = st.toggle(
        "include evaluation sets", key="ds_eval", help="Datasets ingested with --eval."
    )
clauses = [f"({where})"] if where.strip() else []
if not include_eval:
    clauses.append("NOT is_eval")

with ui.guard("reading the catalog"):
    view = data.catalog_view(root, " AND ".join(clauses) or None)
    counts = view.counts
    cols = st.columns(6)
    cols[0].metric("datasets", f"{counts['datasets']:,}")
    cols[1].metric("versions", f"{counts['versions']:,}")
    cols[2].metric("rows (latest versions)", f"{counts['rows']:,}")
    cols[3].metric("categories with data", f"{counts['filled']} / {counts['categories']}")
    cols[4].metric("mixture versions", f"{counts['mixtures']:,}")
    cols[5].metric("runs", f"{counts['runs']:,}")
    if counts["datasets"] == 0:
        st.info(
            "No datasets yet. Add one with `kalmix ingest FILE --name NAME --category CATEGORY` "
            "(`kalmix catalog categories` lists the categories); every category below is still "
            "a gap to fill.",
            icon=":material/info:",
        )
    categories, datasets, languages = st.tabs(
        ["Categories", "Datasets", "Languages"], key="catalog_tab", on_change="rerun"
    )
    for tab, render in (
        (categories, categories_tab),
        (datasets, datasets_tab),
        (languages, languages_tab),
    ):
        if tab.open:
            with tab:
                render(view)
