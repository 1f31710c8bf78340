"""diffprune.serve: the torch-free runtime as a Ray Serve application (`diffprune serve`), a client, and a
load tester (`diffprune loadtest`). Needs the ``serve`` extra (ray[serve], prometheus-client); imports no
torch. Ray is imported only by app.py and server.py.
"""

from .config import Limits, ServeConfig, resolve_target

__all__ = ["Limits", "ServeConfig", "resolve_target"]
