"""Entry point of `streamlit run`: finds the workspace, then runs the chosen page.

The workspace comes from `KALMIX_HOME` (set by `kalmix dashboard --workspace DIR`). If it is
missing or unreadable the app says why and how to fix it instead of showing any page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import data

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="kalmix", page_icon=":material/dataset:", layout="wide")

if "root" not in st.session_state:  # checked once per browser session
    try:
        root = data.workspace_root()
        trouble = data.problem(root)
    except Exception as err:  # an unreadable workspace is a message, never a traceback
        trouble = data.error_text(err)
    if trouble:
        st.title("kalmix")
        st.error(trouble)
        st.stop()
    st.session_state["root"] = root
root = st.session_state["root"]

with st.sidebar:
    st.caption(f"workspace `{root}`")
    if st.button("Refresh data", icon=":material/refresh:", help="Re-read the catalog now."):
        st.cache_data.clear()

pages = st.navigation(
    [
        st.Page(
            HERE / "pages/catalog.py", title="Catalog", icon=":material/category:", default=True
        ),
        st.Page(HERE / "pages/dataset.py", title="Dataset", icon=":material/table_view:"),
        st.Page(HERE / "pages/mixtures.py", title="Mixtures", icon=":material/blender:"),
        st.Page(HERE / "pages/runs.py", title="Runs", icon=":material/model_training:"),
        st.Page(HERE / "pages/compare.py", title="Compare", icon=":material/leaderboard:"),
    ]
)
pages.run()
