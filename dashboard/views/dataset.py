"""Dataset page: one version's lineage graph, language and length distributions, removals by
reason with the removed text, sample rows, and every version of the dataset.

The dataset and version live in the URL (`?name=faq&v=2`) so a view can be shared.
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from corpus import storage
from dashboard import data, ui

root = ui.root()
st.title("Dataset")


def dot_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def lineage_dot(family: pd.DataFrame, selected: str, dataset: str) -> str:
    """Graphviz source: one box per version, an edge per derivation labelled by what it did."""
    lines = [
        "digraph lineage {",
        "rankdir=LR;",
        'node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, '
        'fillcolor="#f5f5f5", color="#9e9e9e"];',
        'edge [fontname="Helvetica", fontsize=10, color="#757575"];',
    ]
    for row in family.itertuples():
        ref = f"{row.dataset}@v{row.version}"
        fill = "#c8e6c9" if ref == selected else "#f5f5f5" if row.dataset == dataset else "#e3f2fd"
        label = f"{ref}\\n{dot_label(row.operation)}\\n{row.rows:,} rows"
        lines.append(f'"{dot_label(ref)}" [label="{label}", fillcolor="{fill}"];')
        if isinstance(row.parent_dataset, str):
            parent = f"{row.parent_dataset}@v{int(row.parent_version)}"
            reasons = json.loads(row.removed_by_reason) if row.removed_by_reason else {}
            what = ", ".join(f"{k} {v:,}" for k, v in reasons.items())
            edge = dot_label(f"{row.operation}: -{what}" if what else row.operation)
            lines.append(f'"{dot_label(parent)}" -> "{dot_label(ref)}" [label="{edge}"];')
    lines.append("}")
    return "\n".join(lines)


def ancestry(family: pd.DataFrame, dataset: str, version: int) -> pd.DataFrame:
    """The selected version and its ancestors, oldest first, with rows in and out per step."""
    by_ref = {(r.dataset, r.version): r for r in family.itertuples()}
    chain, key = [], (dataset, version)
    while key in by_ref and len(chain) < 1000:
        row = by_ref[key]
        chain.append(row)
        key = (
            (row.parent_dataset, row.parent_version)
            if isinstance(row.parent_dataset, str)
            else None
        )
    steps = []
    for row in reversed(chain):
        parent = by_ref.get((row.parent_dataset, row.parent_version))
        params = json.loads(row.params) if row.params else {}
        steps.append(
            {
                "version": f"{row.dataset}@v{row.version}",
                "operation": row.operation,
                "parameters": json.dumps(
                    {k: v for k, v in params.items() if v not in (None, False, "", [], {})},
                    ensure_ascii=False,
                ),
                "rows in": parent.rows if parent is not None else None,
                "rows kept": row.rows,
                "rows removed": int(row.removed) if pd.notna(row.removed) else 0,
                "removed by reason": row.removed_by_reason or "",
            }
        )
    return pd.DataFrame(steps)


with ui.guard("reading the dataset"):
    asked = st.query_params.get("name")
    version_asked = st.query_params.get("v")
    ref = f"{asked}@v{version_asked}" if asked and version_asked else asked
    view = data.dataset_view(root, ref)
    if view.info is None:
        st.info(
            "The catalog has no datasets yet. Ingest one with "
            "`kalmix ingest FILE --name NAME --category CATEGORY`, then come back here."
        )
        st.stop()
    info = view.info
    versions = view.versions.to_pandas()
    left, right = st.columns([3, 1])
    name = left.selectbox("dataset", view.names, index=view.names.index(info.dataset))
    numbers = versions["version"].tolist()[::-1]
    number = right.selectbox(
        "version", numbers, index=numbers.index(info.version), format_func=lambda v: f"v{v}"
    )
    if name != info.dataset or number != info.version:
        st.query_params["name"] = name
        if name == info.dataset:
            st.query_params["v"] = str(number)
        else:
            st.query_params.pop("v", None)
        st.rerun()

    st.subheader(f"{info.ref}")
    stats = info.stats
    removed = int(stats.get("removed", 0) or 0)
    cols = st.columns(5)
    cols[0].metric("rows", f"{info.rows:,}")
    cols[1].metric("removed by this version", f"{removed:,}")
    cols[2].metric("versions", len(numbers))
    cols[3].metric("languages", len(stats.get("languages", {})))
    cols[4].metric("task type", info.task_type)
    st.caption(
        f"category `{info.category}` · made by `{info.operation}`"
        + (f" from `{info.parent}`" if info.parent else "")
        + f" · content hash `{info.content_hash[:12]}` · files under `{info.path}`"
    )
    files = tuple(str(f) for f in info.files)
    missing = [f for f in files if not storage.exists(f)]
    if missing:
        st.warning(
            f"{len(missing)} data file(s) of {info.ref} are missing on disk; "
            "`kalmix catalog check` lists what is wrong."
        )

    st.markdown("#### Lineage")
    family = view.family.to_pandas()
    st.graphviz_chart(lineage_dot(family, str(info.ref), info.dataset), width="stretch")
    st.dataframe(ancestry(family, info.dataset, info.version), hide_index=True, key="lineage")

    st.markdown("#### Distributions")
    lang_col, len_col = st.columns(2)
    languages = stats.get("languages") or {}
    with lang_col:
        if languages:
            langs = pd.DataFrame({"language": list(languages), "rows": list(languages.values())})
            fig = go.Figure(go.Bar(x=langs["language"], y=langs["rows"]))
            fig.update_layout(title="rows by language")
            fig.update_layout(margin={"t": 40, "b": 0}, height=300)
            st.plotly_chart(fig, key="languages")
        else:
            st.info("No language counts for this version.")
    with len_col:
        lengths = data.length_histogram(files).to_pandas()
        if lengths.empty:
            st.info("No text to measure (empty version or missing files).")
        else:
            fig = go.Figure(
                [
                    go.Bar(x=part["chars"], y=part["rows"], name=field, opacity=0.7)
                    for field, part in lengths.groupby("field")
                ]
            )
            fig.update_layout(
                barmode="overlay",
                title="text length, first 20k rows (chars; last bin: p99 and longer)",
            )
            fig.update_layout(margin={"t": 40, "b": 0}, height=300)
            st.plotly_chart(fig, key="lengths")
    chars = stats.get("chars") or {}
    if chars:
        st.caption(
            " · ".join(
                f"{field}: median {c.get('p50')}, p90 {c.get('p90')}, p99 {c.get('p99')} chars"
                for field, c in chars.items()
            )
        )

    st.markdown("#### Removed by this version")
    by_reason = view.removed.to_pandas()
    if by_reason.empty:
        invalid = stats.get("invalid")
        st.info(
            f"{info.ref} removed no rows"
            + (f" ({invalid} invalid input lines were skipped at ingest)" if invalid else "")
            + ". Versions made by dedup, langid, filters or decontamination list what they "
            "dropped here, by reason."
        )
    else:
        fig = go.Figure(go.Bar(x=by_reason["rows"], y=by_reason["reason"], orientation="h"))
        fig.update_layout(margin={"t": 10, "b": 0}, height=80 + 30 * len(by_reason))
        st.plotly_chart(fig, key="removals")
        examples = view.examples
        texts = data.removed_texts(
            tuple(view.parent_files), tuple(examples.column("id").to_pylist())
        )
        joined = examples.to_pandas().merge(texts.to_pandas(), on="id", how="left")
        st.caption(
            f"Examples per reason (up to 3), with their text from the parent version {info.parent}:"
        )
        st.dataframe(joined, hide_index=True, key="removal_examples")

    st.markdown("#### Sample rows")
    sample = data.sample_rows(files)
    if sample.num_rows:
        st.dataframe(sample, hide_index=True, key="sample")
    else:
        st.info("This version has no rows to show.")

    st.markdown("#### Versions")
    st.dataframe(versions.iloc[::-1], hide_index=True, key="versions")
