"""The runtime's cache folder: compiled forms of an export that are slow to make and safe to reuse.

``$DIFFPRUNE_CACHE`` (default ``$XDG_CACHE_HOME/diffprune``, else ``~/.cache/diffprune``); each backend
keeps a subfolder of its own (``ort-trt`` for ONNX Runtime's TensorRT engines, ``openvino`` for IR).
"""

import os
from pathlib import Path

from .errors import DiffPruneError


def cache_root() -> Path:
    root = os.environ.get("DIFFPRUNE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffprune"


def cache_dir(name: str, create: bool = False) -> Path:
    """``cache_root() / name``; with ``create``, made now, or a clear error when it cannot be."""
    path = cache_root() / name
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DiffPruneError(f"Cannot create the cache folder {str(path)!r} ({e.strerror}); set DIFFPRUNE_CACHE "
                                 "to a writable folder.") from None
    return path
