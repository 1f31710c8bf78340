"""The Diff-Pruning timestep loop, pinned on a model whose loss is known in closed form."""

import types

import numpy as np
import pytest
import torch
import torch.nn as nn

from diffprune.pruning.importance import Calibration
from diffprune.pruning.importance._gradients import accumulate_gradients
from diffprune.sources.architectures import DEFAULT_SCHEDULER


class Identity(nn.Module):
    """Predicts noise as x_t itself (times a learnable 1): loss_t = E[(sqrt(a) x0 + (sqrt(1-a) - 1) eps)^2],
    which falls from ~E[x0^2] + 1 at t = 0 towards 0 as a_t -> 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return types.SimpleNamespace(sample=self.w * x)


def _expected(images, noise, thr):
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float32)
    abar = np.cumprod(1 - betas, dtype=np.float64)
    x0, eps = images.numpy().astype(np.float64), noise.numpy().astype(np.float64)
    running, used, losses = 0.0, [], []
    for t in range(1000):
        loss = np.mean((np.sqrt(abar[t]) * x0 + (np.sqrt(1 - abar[t]) - 1) * eps) ** 2)
        used.append(t)
        losses.append(loss)
        running = max(running, loss)
        if loss < thr * running:
            break
    return used, losses


@pytest.mark.parametrize("thr", [0.05, 0.5, 0.9])
def test_loop_stops_where_the_threshold_says(thr):
    images = torch.rand(6, 1, 4, 4) * 2 - 1
    calib = Calibration(images=images, scheduler_config=DEFAULT_SCHEDULER, micro_batch=4, seed=0, progress=False)
    log = accumulate_gradients(Identity(), calib, thr=thr)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    used, losses = _expected(images, noise, thr)
    assert log.timesteps == used
    assert log.stopped_by_threshold
    np.testing.assert_allclose(log.losses, losses, rtol=1e-4)
    assert log.losses[-1] < thr * max(log.losses)  # the crossing step is included...
    assert all(l >= thr * max(log.losses[: i + 1]) for i, l in enumerate(log.losses[:-1]))  # ...and none before


def test_pinned_stop_for_thr_005():
    # Pinned: with these 6 images and seed 0 the loss first drops below 5% of its max at t = 411
    # (the independent numpy computation in _expected agrees; this guards against drift in the loop).
    images = torch.linspace(-1, 1, 96).reshape(6, 1, 4, 4)
    calib = Calibration(images=images, scheduler_config=DEFAULT_SCHEDULER, micro_batch=6, seed=0, progress=False)
    log = accumulate_gradients(Identity(), calib, thr=0.05)
    assert log.timesteps[-1] == PINNED_STOP
    assert log.timesteps == list(range(PINNED_STOP + 1))


PINNED_STOP = 411


def test_thr_zero_uses_every_timestep():
    calib = Calibration(images=torch.zeros(2, 1, 4, 4), scheduler_config=DEFAULT_SCHEDULER, progress=False)
    log = accumulate_gradients(Identity(), calib, thr=0.0)
    assert log.timesteps == list(range(1000)) and not log.stopped_by_threshold


def test_gradient_does_not_depend_on_micro_batch(tiny):
    import copy

    images = torch.rand(6, 1, 16, 16) * 2 - 1
    grads = []
    for micro in (1, 4, 6):
        model = copy.deepcopy(tiny)
        calib = Calibration(images=images, scheduler_config=DEFAULT_SCHEDULER, micro_batch=micro, progress=False,
                            max_timesteps=2)
        accumulate_gradients(model, calib, thr=0.05)
        grads.append(model.conv_in.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-6)


def test_taylor_score_is_weight_times_gradient():
    import torch_pruning as tp

    from diffprune.pruning.importance._gradients import taylor_scorer

    conv = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1))
    x = torch.randn(3, 2, 5, 5)
    conv(x).square().mean().backward()
    graph = tp.DependencyGraph().build_dependency(conv, example_inputs=x)
    group = graph.get_pruning_group(conv[0], tp.prune_conv_out_channels, idxs=list(range(4)))
    score = taylor_scorer()(group)
    w0, g0, w1, g1 = conv[0].weight, conv[0].weight.grad, conv[1].weight, conv[1].weight.grad
    out_part = (w0 * g0).abs().flatten(1).sum(1)  # biases are not scored (torch-pruning's default)
    in_part = (w1 * g1).abs().transpose(0, 1).flatten(1).sum(1)
    manual = (out_part + in_part) / 2  # group_reduction = mean over the two coupled layers
    manual = manual / manual.mean()  # normalizer = mean
    torch.testing.assert_close(score, manual)


def test_a_loss_that_will_not_fall_is_said_early(tiny, capsys):
    # Random weights: the loss stays flat, so the stop rule would never fire; the user hears it after
    # 20 timesteps, with what to do, not after an hour.
    import diffprune
    from diffprune.sources.architectures import DEFAULT_SCHEDULER

    short = {**DEFAULT_SCHEDULER, "num_train_timesteps": 60}  # a short schedule keeps the test quick
    diffprune.prune(tiny, method="diff-pruning", ratio=0.3, data="builtin:digits", num_images=2,
                    scheduler_config=short, progress=False)
    err = capsys.readouterr().err
    assert "after 20 timesteps the denoising loss" in err and "all 60 timesteps" in err and "--max-timesteps" in err
    diffprune.prune(tiny, method="diff-pruning", ratio=0.3, data="builtin:digits", num_images=2, max_timesteps=25,
                    scheduler_config=short, progress=False)
    assert "denoising loss" not in capsys.readouterr().err  # a cap the user chose needs no advice


def test_log_timestep_weight_divides_each_timesteps_gradient_by_its_loss():
    """timestep_weight="log" sums d(log L_t)/dw: each t's gradient over its own loss, so the low-noise timesteps'
    large losses do not dominate the sum (one micro-batch: the division is per timestep exactly)."""
    images = torch.rand(6, 1, 4, 4) * 2 - 1
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    grads = {}
    for weight in ("loss", "log"):
        model = Identity()
        calib = Calibration(images=images, scheduler_config=DEFAULT_SCHEDULER, micro_batch=6, seed=0, progress=False,
                            max_timesteps=5, timestep_weight=weight)
        log = accumulate_gradients(model, calib, thr=0.0)
        grads[weight] = model.w.grad.item()
    expected = {"loss": 0.0, "log": 0.0}
    for t in log.timesteps:
        xt = abar[t].sqrt() * images + (1 - abar[t]).sqrt() * noise
        loss = ((xt - noise) ** 2).mean()
        grad = (2 * (xt - noise) * xt).mean()  # dL_t/dw at w = 1
        expected["loss"] += grad.item()
        expected["log"] += (grad / loss).item()
    assert log.timesteps == [0, 1, 2, 3, 4]
    assert grads["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert grads["log"] == pytest.approx(expected["log"], rel=1e-4)
    assert abs(grads["log"] - grads["loss"]) > 1e-3 * abs(grads["loss"])  # the weighting changes the sum


def test_unknown_timestep_weight_is_refused():
    import diffprune
    from diffprune import DiffPruneError
    from diffprune.sources.unet import build_unet

    with pytest.raises(DiffPruneError, match="timestep_weight 'equal' is unknown; allowed: loss, log"):
        diffprune.prune(build_unet("tiny"), method="diff-pruning", data="builtin:digits", timestep_weight="equal",
                        progress=False)
