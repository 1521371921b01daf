"""Small pieces every page shares: the workspace root and turning errors into messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from corpus.errors import KalmixError
from dashboard.data import error_text

log = logging.getLogger("kalmix.dashboard")


def root() -> str:
    """The workspace root that `app.py` resolved for this session."""
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
