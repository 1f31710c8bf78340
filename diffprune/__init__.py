"""diffprune: Diff-Pruning (Fang, Ma, Wang, NeurIPS 2023) for diffusers UNets, made deployable.

This module stays light: nothing heavy (torch, diffusers) is imported until a function that needs
it is used, so ``import diffprune.runtime`` stays torch-free.
"""

__version__ = "0.1.0"

from .errors import DiffPruneError

_LAZY = {
    "prune": ("diffprune.pruning", "prune"),
    "PruneReport": ("diffprune.pruning", "PruneReport"),
    "load": ("diffprune.checkpoint", "load"),
    "save": ("diffprune.checkpoint", "save"),
    "load_unet": ("diffprune.models", "load_unet"),
    "build_unet": ("diffprune.models", "build_unet"),
    "count_macs_params": ("diffprune.models", "count_macs_params"),
}

__all__ = ["DiffPruneError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'diffprune' has no attribute {name!r}")
