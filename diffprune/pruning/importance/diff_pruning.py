"""Diff-Pruning importance (Fang, Ma, Wang, NeurIPS 2023, arXiv 2305.10924, Sec. 4.2, Eq. 8-9).

Taylor importance |w * dL/dw| where L sums the denoising losses of the early timesteps only:
t = 0, 1, 2, ... until the loss drops below ``thr`` x the largest loss seen. Late, noisy steps
mostly model noise and carry little of the image structure, so their gradients are left out.
"""

from ._gradients import Calibration, accumulate_gradients, taylor_scorer


class DiffPruningImportance:
    name = "diff-pruning"
    needs_data = True

    def __init__(self, thr: float = 0.05, score_norm: str = "group"):
        self.thr = thr
        self._score = taylor_scorer(score_norm)

    def prepare(self, model, calib: Calibration):
        return accumulate_gradients(model, calib, thr=self.thr)

    def __call__(self, group):
        return self._score(group)
