"""Small pieces every page shares: the workspace root and turning errors into messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from corpus.errors import KalmixError
from dashboard import data
from dashboard.data import error_text

log = logging.getLogger("kalmix.dashboard")


def root() -> str:
    """This session's workspace root, resolved and checked on its first script run.

    Any page may be a session's first request (a bookmark, a shared link), so every page asks
    here rather than relying on `app.py` having run first. A workspace that cannot be shown
    is a message and the end of the script run, never a traceback.
    """
    if "root" not in st.session_state:
        try:
            found = data.workspace_root()
            trouble = data.problem(found)
        except Exception as err:  # an unreadable workspace is a message, never a traceback
            trouble = error_text(err)
        if trouble:
            st.title("kalmix")
            st.error(trouble)
            st.stop()
        st.session_state["root"] = found
    return st.session_state["root"]


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Show a failure inside this block as one error line, never a traceback on the page.

    Streamlit's own control flow (`st.stop`, `st.rerun`, `st.switch_page`) raises
    BaseException subclasses, so it passes through.
    Unexpected errors are also logged with their traceback to the server's terminal.
    """
    try:
        yield
    except Exception as err:
        if not isinstance(err, KalmixError):
            log.exception("dashboard: %s failed", what)
        st.error(f"{what}: {error_text(err)}")


def sql_list(values: list[str]) -> str:
    """`'a', 'b'` for an SQL IN list (quotes doubled)."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
