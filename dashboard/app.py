"""Entry point of `streamlit run`: finds the workspace, then runs the chosen page.

The workspace comes from `KALMIX_HOME` (set by `kalmix --workspace DIR dashboard`). If it is
missing or unreadable the app says why and how to fix it instead of showing any page.

The pages live in `views/`, not `pages/`: Streamlit auto-discovers a `pages/` folder beside
the main script, which put raw file names in the sidebar and ran a page's script without this
file when its URL (e.g. `/mixtures`) was a session's first request. Only `st.navigation`
below routes now; each page's URL is its file name (`/dataset`, `/mixtures`, ...).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import auth, ui

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="kalmix", page_icon=":material/dataset:", layout="wide")

root = ui.root()
auth.check_session()

with st.sidebar:
    st.caption(f"workspace `{root}`")
    if st.button("Refresh data", icon=":material/refresh:", help="Re-read the catalog now."):
        st.cache_data.clear()

pages = st.navigation(
    [
        st.Page(
            HERE / "views/catalog.py", title="Catalog", icon=":material/category:", default=True
        ),
        st.Page(HERE / "views/dataset.py", title="Dataset", icon=":material/table_view:"),
        st.Page(HERE / "views/mixtures.py", title="Mixtures", icon=":material/blender:"),
        st.Page(HERE / "views/runs.py", title="Runs", icon=":material/model_training:"),
        st.Page(HERE / "views/compare.py", title="Compare", icon=":material/leaderboard:"),
        st.Page(HERE / "views/search.py", title="Search", icon=":material/travel_explore:"),
    ]
)
pages.run()
