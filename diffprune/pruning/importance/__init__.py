"""Importance criteria: one file each, a registry by name.

A criterion has ``prepare(model, calibration)`` (gradient criteria accumulate gradients there) and
is a callable ``criterion(group) -> tensor`` with one score per channel of a torch-pruning group.
"""

from ._gradients import Calibration, GradientLog
from .diff_pruning import DiffPruningImportance
from .magnitude import MagnitudeImportance
from .random import RandomImportance
from .reinit import ReinitImportance
from .taylor import TaylorImportance

CRITERIA = {c.name: c for c in (DiffPruningImportance, TaylorImportance, MagnitudeImportance,
                                RandomImportance, ReinitImportance)}

__all__ = ["CRITERIA", "Calibration", "GradientLog", *(c.__name__ for c in CRITERIA.values())]
