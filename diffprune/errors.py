"""The one exception type for user errors.

The CLI prints a :class:`DiffPruneError` message without a traceback and exits non-zero; every
other exception is a bug and keeps its traceback.
"""


class DiffPruneError(Exception):
    """A user error: the message says what was given, what is allowed, and what to do."""
