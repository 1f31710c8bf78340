"""Re-initialisation baseline: the random structure of :mod:`.random`, then every weight drawn
afresh. This is "train the small model from scratch" (the paper's "Scratch Training" row): what
pruning has to beat to be worth its cost."""

from .random import RandomImportance


class ReinitImportance(RandomImportance):
    name = "reinit"
    reinitialise = True
