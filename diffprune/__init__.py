"""diffprune: Diff-Pruning (Fang, Ma, Wang, NeurIPS 2023) for diffusers UNets, made deployable.

This module stays light: nothing heavy (torch, diffusers) is imported until a function that needs
it is used, so ``import diffprune.runtime`` stays torch-free.
"""

__version__ = "0.1.0"

from .errors import DiffPruneError

_LAZY = {
    "prune": ("diffprune.pruning", "prune"),
    "PruneReport": ("diffprune.pruning", "PruneReport"),
    "prune_decoder": ("diffprune.pruning.decoder", "prune_decoder"),
    "finetune_decoder": ("diffprune.training.decoder", "finetune_decoder"),
    "load": ("diffprune.sources", "load"),
    "save": ("diffprune.sources", "save"),
    "resolve": ("diffprune.sources", "resolve"),
    "load_source": ("diffprune.sources", "load_source"),
    "build_unet": ("diffprune.sources", "build_unet"),
    "count_macs_params": ("diffprune.sources", "count_macs_params"),
    "finetune": ("diffprune.training.finetune", "finetune"),
    "FinetuneConfig": ("diffprune.training.config", "FinetuneConfig"),
}

__all__ = ["DiffPruneError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'diffprune' has no attribute {name!r}")
