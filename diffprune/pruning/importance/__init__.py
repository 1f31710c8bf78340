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

# The criterion used when none is named, by the study of benchmarks/criteria.py (3 seeds, half the MACs, 10 % of the
# dense training as fine-tuning): magnitude ties Diff-Pruning on the pixel digits DDPM (FID 137.6 +- 6.1 vs 142.0 +-
# 12.9) and beats it on the text model on 3/3 seeds (73.9 +- 1.0 vs 96.9 +- 7.8), with no calibration data and a
# third of the time. Diff-Pruning stays one --method away (benchmarks/README.md, "Which criterion").
DEFAULT_METHOD = "magnitude"

__all__ = ["CRITERIA", "DEFAULT_METHOD", "Calibration", "GradientLog", *(c.__name__ for c in CRITERIA.values())]
