"""The kalmix Streamlit dashboard: browse the catalog, build mixtures, run and compare training.

`data.py` holds every read (short read-only catalog connections, cached a few seconds);
`actions.py` starts the `kalmix` commands that write. The app itself never opens a write
connection, so a training run or an ingest can write the catalog while it is open.
"""
