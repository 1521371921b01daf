"""Dashboard pages, run by st.navigation in dashboard/app.py (a package so installs ship it).

The folder is not called `pages/`: Streamlit would auto-discover a `pages/` folder beside the
app, list its raw file names in the sidebar and run a page script on its own (without
`app.py`) when its URL is the first request of a session.
"""
