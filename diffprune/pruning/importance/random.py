"""Random importance: channels kept at random, weights inherited. The paper's "Random" baseline.
Seeded through ``torch.manual_seed`` by the pruner, so a seed gives the same structure."""


class RandomImportance:
    name = "random"
    needs_data = False

    def __init__(self, thr: float = 0.0):
        pass

    def prepare(self, model, calib=None):
        return None

    def __call__(self, group):
        import torch

        _, idxs = group[0]
        return torch.rand(len(idxs))
