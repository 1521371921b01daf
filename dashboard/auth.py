"""The dashboard's token: who may start processes from a dashboard reachable from elsewhere.

`kalmix dashboard --host H` with a non-loopback H generates a token (or takes `--token`),
prints the address with it (`http://H:PORT/?token=...`, as Jupyter does) and hands it to the
app in `KALMIX_DASHBOARD_TOKEN`. A browser session presents it once, through the `token`
query parameter or the sidebar's token box; from then on the session may start processes.
A session that has not presented it can read every page but starts nothing: `actions`
refuses to run `kalmix mix create`, `train`, `eval` or to cancel a run (`require`).
Without the variable (a loopback host) every session may start processes.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket

from corpus.errors import KalmixError

TOKEN_ENV = "KALMIX_DASHBOARD_TOKEN"
SESSION_KEY = "kalmix_token_ok"
ENTRY_KEY = "kalmix_token_entry"


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address (127.0.0.0/8, ::1).

    An empty host, a wildcard (0.0.0.0, ::) or a name that does not resolve is not loopback.
    """
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def required() -> str | None:
    """The token this server requires, or None (a loopback dashboard)."""
    return os.environ.get(TOKEN_ENV) or None


def matches(given: object) -> bool:
    token = required()
    return (
        token is not None
        and isinstance(given, str)
        and hmac.compare_digest(given.encode(), token.encode())
    )


def authorized() -> bool:
    """Whether this browser session may start processes."""
    if required() is None:
        return True
    import streamlit as st

    return bool(st.session_state.get(SESSION_KEY))


def refusal(what: str) -> str:
    return (
        f"{what} is refused: this dashboard is reachable from other machines and this browser "
        "session has not presented its token. Open the address `kalmix dashboard` printed "
        "(http://HOST:PORT/?token=...) or enter the token in the sidebar."
    )


def require(what: str) -> None:
    """Raise a KalmixError saying why, unless this session may start processes."""
    if not authorized():
        raise KalmixError(refusal(what))


def check_session() -> None:
    """Called on every script run: accept the token from the URL or the sidebar box once per
    session, and keep it in the URL so that a reload of the tab stays signed in."""
    if required() is None:
        return
    import streamlit as st

    if not st.session_state.get(SESSION_KEY):
        given = st.query_params.get("token") or st.session_state.get(ENTRY_KEY)
        if matches(given):
            st.session_state[SESSION_KEY] = True
    if st.session_state.get(SESSION_KEY):
        if st.query_params.get("token") != required():
            st.query_params["token"] = required()
        return
    with st.sidebar:
        st.text_input(
            "token (to start processes)",
            type="password",
            key=ENTRY_KEY,
            help="The token `kalmix dashboard` printed. Without it this session can read every "
            "page but cannot create mixtures or start training and evaluation.",
        )
        if st.session_state.get(ENTRY_KEY):
            st.error("That is not this dashboard's token.")
        else:
            st.caption("Read-only: this session has not presented the dashboard's token.")
