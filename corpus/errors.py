"""The one exception type users see.

Every expected failure (bad input, unknown names, locked catalog) raises `KalmixError` with a
message written for the person at the terminal; the CLI prints it on one line and exits 2.
Anything else is a bug and keeps its traceback.
"""


class KalmixError(Exception):
    """An error caused by input or environment, explained in its message."""
