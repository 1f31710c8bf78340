"""Gradients of the denoising loss, accumulated over timesteps for Taylor importance."""

import time
from dataclasses import dataclass, field

from ...errors import DiffPruneError
from ... import threads


@dataclass
class Calibration:
    """What gradient-based criteria need: clean images and the noise schedule they train with."""

    images: "object"  # torch tensor (N, C, H, W) in [-1, 1]
    scheduler_config: dict
    micro_batch: int = 16  # images per forward/backward; lower it when memory is short
    seed: int = 0
    progress: bool = True
    description: str = ""
    max_timesteps: int | None = None  # a hard cap on the timesteps summed, whatever thr says
    timestep_weight: str = "loss"  # "loss": sum dL_t/dw (the paper's); "log": sum d(log L_t)/dw, every t counts alike
    inputs: dict = field(default_factory=dict)  # conditioning per image (diffprune.sources.conditioning), batch-first


@dataclass
class GradientLog:
    timesteps: list = field(default_factory=list)  # the t whose gradients were summed, in order
    losses: list = field(default_factory=list)  # the denoising loss at each of them
    stopped_by_threshold: bool = False


def _targets(scheduler_config: dict):
    import torch
    from diffusers import DDPMScheduler

    allowed = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    scheduler = DDPMScheduler.from_config(allowed)
    prediction = scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise DiffPruneError(
            f"Scheduler prediction_type {prediction!r} is not supported; allowed: epsilon, v_prediction, sample."
        )
    return scheduler.alphas_cumprod.to(torch.float32), prediction, scheduler.config.num_train_timesteps


def accumulate_gradients(model, calib: Calibration, thr: float) -> GradientLog:
    """Sum d(loss_t)/dw into ``param.grad`` for t = 0, 1, 2, ... (Diff-Pruning, Fang et al. 2023, Eq. 9).

    ``calib.timestep_weight="log"`` sums d(log L_t)/dw = (dL_t/dw) / L_t instead (each micro-batch's gradient
    divided by its own loss): the low-noise timesteps, whose loss is largest, then weigh no more than the others.

    The loop stops after the first t whose loss falls below ``thr`` x the largest loss seen so far;
    that step's gradient is included. ``thr = 0`` sums every timestep (plain Taylor pruning). The
    loss at each t is the mean over all calibration images, computed in micro-batches so that large
    models fit in memory: each micro-batch's loss is weighted by its share of the images.

    Several processes (an initialised torch.distributed group, e.g. ``accelerate launch``): each rank
    takes a contiguous share of the images (the same noise rows one process would give them) and the
    per-rank gradients are summed once at the end. The gradients are what is summed, not Taylor scores:
    the score |w * sum_r g_r| is not sum_r |w * g_r|, while the gradient of the summed loss is exactly the
    sum of the ranks' gradients, so every rank then holds the one-process gradient (up to float order).
    The loss of each t is summed over the ranks before the stop rule reads it, so every rank stops at the
    same t, the one a single process would stop at.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from .. import _distributed
    from ..._io import ProgressLines, quiet
    from ...sources.conditioning import inputs_to, slice_inputs

    device = next(model.parameters()).device
    alphas_cumprod, prediction, num_steps = _targets(calib.scheduler_config)
    images = calib.images.to(device)
    cond = inputs_to(calib.inputs, device)
    n = images.shape[0]
    generator = torch.Generator(device="cpu").manual_seed(calib.seed)
    noise = torch.randn(images.shape, generator=generator).to(device)  # one draw, reused at every t
    rank, world = _distributed.world()
    if n < world:
        raise DiffPruneError(f"{n} calibration images cannot be shared by {world} processes (each needs at least one); "
                             f"use --num-images {world} or more, or fewer processes.")
    lo, hi = _distributed.share(n)  # this rank's images; the whole set in one process
    model.zero_grad(set_to_none=True)
    model.eval()  # dropout off: the gradient should measure the weights, not a random mask
    log = GradientLog()
    max_loss = 0.0
    steps = num_steps if calib.max_timesteps is None else min(num_steps, calib.max_timesteps)
    bar = tqdm(range(steps), desc="importance: timesteps", disable=quiet(calib.progress and rank == 0), leave=False)
    # The loop stops where the loss falls below thr x its maximum: `steps` and the ETA are upper bounds.
    lines = ProgressLines("prune: importance timestep", steps, enabled=calib.progress and rank == 0, bound=thr > 0)
    finished = []  # perf_counter() at the end of each timestep: the recent pace, past the first steps' warm-up
    for t in bar:
        threads.tick()  # the share policy follows the machine's load
        a = alphas_cumprod[t].to(device)
        total = 0.0
        for start in range(lo, hi, calib.micro_batch):
            end = min(start + calib.micro_batch, hi)
            x0 = images[start:end]
            eps = noise[start:end]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # q(x_t | x_0), DDPM Eq. 4
            target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
            timestep = torch.full((x0.shape[0],), t, device=device, dtype=torch.long)
            # The same conditioning at every t: class labels, empty-prompt text (see diffprune.sources.conditioning).
            pred = model(xt, timestep, **slice_inputs(cond, start, end)).sample
            loss = F.mse_loss(pred.float(), target) * (x0.shape[0] / n)
            if calib.timestep_weight == "log":
                (loss / max(loss.item() * n / x0.shape[0], 1e-12)).backward()  # share x d(log mse)/dw
            else:
                loss.backward()
            total += loss.item()
        total = _distributed.sum_scalar(total, device)  # the loss over all images, identical on every rank
        log.timesteps.append(t)
        log.losses.append(total)
        max_loss = max(max_loss, total)
        bar.set_postfix(loss=f"{total:.4f}", stop_below=f"{thr * max_loss:.4f}")
        finished.append(time.perf_counter())
        lines.update(t + 1, f", loss {total:.4f} (stops below {thr * max_loss:.4f})" if thr > 0 else f", loss {total:.4f}")
        if total < thr * max_loss:
            log.stopped_by_threshold = True
            break
        if t + 1 == TREND_AFTER and thr > 0 and steps == num_steps > TREND_AFTER and rank == 0:  # not when capped
            pace = (finished[-1] - finished[-PACE_OVER - 1]) / PACE_OVER  # seconds per timestep, warm-up left out
            _warn_if_the_loss_will_not_fall(log.losses, thr * max_loss, steps, pace)
    bar.close()
    if world > 1:
        # Every rank ran the same timesteps on the same model, so the same parameters hold a gradient.
        for p in model.parameters():
            if p.grad is not None:
                _distributed.sum_(p.grad)
    return log


TREND_AFTER = 20  # timesteps after which the loss curve says whether thr will be reached
PACE_OVER = 10  # the pace is measured over the last timesteps before it: the first ones include warm-up


def _warn_if_the_loss_will_not_fall(losses, stop_below: float, steps: int, pace: float) -> None:
    """Say early when the stop rule may not fire: a model on data it was not trained on (random weights,
    another domain) keeps a flat loss, and all timesteps would be summed. The time given is an upper bound
    (every timestep left, at the measured ``pace`` in seconds per timestep): a trained model's loss often
    falls later, and the stop then comes much sooner."""
    import sys

    import numpy as np
    from tqdm.auto import tqdm

    recent = np.log(np.maximum(np.asarray(losses[-10:], dtype=np.float64), 1e-12))
    slope = np.polyfit(np.arange(len(recent)), recent, 1)[0]  # log-loss per timestep
    t = len(losses)
    projected = t + (np.log(stop_below) - recent[-1]) / slope if slope < 0 else float("inf")
    if projected <= steps:
        return
    from ..._io import duration

    tqdm.write(
        f"diffprune: warning: after {t} timesteps the denoising loss ({losses[-1]:.4f}) is not yet falling towards the "
        f"stop at {stop_below:.4f} (thr x its maximum). If it never gets there, all {steps} timesteps are summed: "
        f"at most {steps - t} more, up to {duration(pace * (steps - t))} at the last {PACE_OVER} timesteps' pace "
        f"({pace:.2f} s each); the loss may still fall and stop it much sooner. A flat loss comes from random "
        "weights or data the model was not trained on; cap it with --max-timesteps N (trained models stop after "
        "a few hundred), or check --data and --resize.", file=sys.stderr)


SCORE_NORMS = ("group", "layer", "none")
TIMESTEP_WEIGHTS = ("loss", "log")


def taylor_scorer(score_norm: str = "group"):
    """First-order Taylor |w * dL/dw|, summed per channel, averaged over the dependency group and
    mean-normalised (Molchanov et al. 2019; the reference Diff-Pruning setting).

    ``score_norm="layer"`` divides each coupled layer's scores by their mean before the group average, so
    that every layer of a group (a conv, its GroupNorm, the next layer's inputs, cross-attention's to_q ...)
    has one equal vote; with ``"group"`` (the reference) the layer with the largest |w * g| decides alone.
    ``"none"``: the group average without the final mean-normalisation, so that scores compare across groups
    (|w * dL/dw| estimates the loss change of removing a weight wherever it is; HALP ranks channels globally by
    it) — what a latency target's knapsack needs to tell which group's channels matter (diffprune.latency.knapsack);
    a MAC target prunes every group at one ratio, where it changes nothing."""
    import torch_pruning as tp

    if score_norm not in SCORE_NORMS:
        raise DiffPruneError(f"score_norm {score_norm!r} is unknown; allowed: {', '.join(SCORE_NORMS)} (group: the "
                             "reference Diff-Pruning scores; layer: each coupled layer normalised before the average; "
                             "none: not normalised, comparable across groups, for latency targets).")
    if score_norm == "group":
        return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer="mean")
    if score_norm == "none":
        return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)

    class LayerNormalisedTaylor(tp.importance.GroupTaylorImportance):
        def _reduce(self, group_imp, group_idxs):
            return super()._reduce([imp / imp.mean().clamp_min(1e-30) for imp in group_imp], group_idxs)

    return LayerNormalisedTaylor(group_reduction="mean", normalizer="mean")
