"""Plain Taylor importance (Molchanov et al., CVPR 2019): |w * dL/dw| with L summed over *all*
timesteps. The Diff-Pruning paper's baseline (Table 1, "Taylor")."""

from ._gradients import Calibration, accumulate_gradients, taylor_scorer


class TaylorImportance:
    name = "taylor"
    needs_data = True

    def __init__(self, thr: float = 0.0, score_norm: str = "group"):
        self._score = taylor_scorer(score_norm)

    def prepare(self, model, calib: Calibration):
        return accumulate_gradients(model, calib, thr=0.0)

    def __call__(self, group):
        return self._score(group)
