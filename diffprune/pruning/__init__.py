"""Structural pruning: importance criteria (importance/, one file each), the pruner that chooses and removes
channels under their couplings (pruner.py), and the processes that share the importance work (_distributed.py)."""

from ._distributed import start_processes
from .pruner import PruneReport, prune

__all__ = ["PruneReport", "prune", "start_processes"]
