"""The one exception type for user errors, shared by the whole project.

It lives here, in the torch-free runtime, so the runtime can raise it without importing the torch
side; ``diffprune.DiffPruneError`` is this same class. The CLI prints its message without a traceback.
"""


class DiffPruneError(Exception):
    """A user error: the message says what was given, what is allowed, and what to do."""
