"""Magnitude importance (Li et al., ICLR 2017): the L2 norm of each channel's weights, averaged over
the dependency group and mean-normalised. Needs no data. The paper's "Magnitude" baseline."""


class MagnitudeImportance:
    name = "magnitude"
    needs_data = False

    def __init__(self, thr: float = 0.0):
        import torch_pruning as tp

        self._score = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")

    def prepare(self, model, calib=None):
        return None

    def __call__(self, group):
        return self._score(group)
