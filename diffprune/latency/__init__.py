"""Latency tables and pruning to a latency on the target (issue 23).

``profile`` measures how a UNet's call time on a backend depends on the width of each prunable group
(diffprune.latency.profile; the model in diffprune.latency.model); ``choose_widths`` picks the widths that keep
the most importance under a latency budget (diffprune.latency.knapsack, pure); :class:`LatencyTarget` carries
a target into :func:`diffprune.prune`.
"""

from .knapsack import Choice, choose_widths
from .model import predict_ms
from .profile import profile
from .target import LatencyTarget

__all__ = ["Choice", "LatencyTarget", "choose_widths", "predict_ms", "profile"]
