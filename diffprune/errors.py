"""The one exception type for user errors (defined in the torch-free runtime, re-exported here).

The CLI prints a :class:`DiffPruneError` message without a traceback and exits non-zero; every
other exception is a bug and keeps its traceback.
"""

from diffprune.runtime.errors import DiffPruneError

__all__ = ["DiffPruneError"]
