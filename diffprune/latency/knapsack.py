"""Widths under a latency budget: which channels of which group to keep so that the predicted call time fits
``budget_ms`` and the most importance is kept (HALP's augmented knapsack, Shen et al., "Structural Pruning via
Latency-Saliency Knapsack", NeurIPS 2022, solved greedily).

Pure: a function of a latency table (diffprune.latency.model) and importance scores, unit-tested without
timing anything. Couplings are the table's: each group moves in whole steps of ``step`` channels per
channel-group (GroupNorm groups, attention heads and GEGLU halves stay equal; widths stay multiples of
``round_to``), from ``per`` down to a floor, and the same positions leave every channel-group
(diffprune.pruning.pruner._Planner.apply removes them). Widths the model's inputs fix (cross-attention
to_k/to_v inputs, the image channels) belong to no group and never move.

Greedy: start dense; while the prediction is over budget, take the one step, among all groups, that loses the
least importance per millisecond it saves. Importance is compared across groups after normalising each group's
scores to mean 1 per channel (raw Taylor scores differ by orders of magnitude between layers), so a group's
width is worth its channel count, shared out by rank.
"""

import math
from dataclasses import dataclass

from ..errors import DiffPruneError
from . import model as latency_model

MIN_FRACTION = 0.25  # no group below a quarter of its width: one-channel bottlenecks ruin fine-tuning


@dataclass
class Choice:
    keep: dict  # group -> channels kept per channel-group
    predicted_ms: float
    dense_ms: float  # predicted, dense
    floor_ms: float  # predicted with every group at its floor
    retained: float  # fraction of the (normalised) importance kept


def floor_keep(per: int, step: int, min_fraction: float) -> int:
    """The fewest channels per channel-group a group may keep: a multiple of ``step``, at least
    ``min_fraction`` of ``per``, at least one step (``per`` itself when it is a step or less)."""
    if per <= step:
        return per
    return min(per, max(step, math.ceil(per * min_fraction / step) * step))


def _next_down(keep: int, step: int) -> int:
    """The lattice point below ``keep``: multiples of ``step`` (a width that is not one drops to the nearest)."""
    return (keep - 1) // step * step


def choose_widths(table: dict, steps: dict, scores: dict, budget_ms: float,
                  min_fraction: float = MIN_FRACTION, normalise: bool = True) -> Choice:
    """Keep counts per group whose predicted time is at most ``budget_ms``, keeping the most importance.

    ``table``: a latency table (its ``layers`` and ``coefficients``). ``steps``: group -> (channel groups, channels
    per channel-group, step), as diffprune.pruning.pruner._Planner.steps gives them for a ``round_to``.
    ``scores``: group -> importance of each position within a channel-group (``per`` numbers; higher = keep).
    Groups without scores stay dense. Raises DiffPruneError when even the floor is over budget. ``normalise``:
    each group's scores scaled to mean 1 per channel first (scores that do not compare across groups: magnitude,
    mean-normalised Taylor); False ranks them as given (un-normalised Taylor, ``score_norm="none"``)."""
    c = table["coefficients"]
    steps = {g: tuple(v) for g, v in steps.items() if g in scores}
    frac = {g: 1.0 for g in steps}
    touching = {g: [] for g in steps}  # group -> the layers whose cost its width changes
    for layer in table["layers"]:
        for g in sorted(latency_model.groups_of(layer) & touching.keys()):
            touching[g].append(layer)

    def layer_ms(layer, f):
        return latency_model.layer_ms(c, layer, f)

    def total_ms(f):
        return c["constant_ms"] + sum(layer_ms(layer, f) for layer in table["layers"])

    # Normalised scores, sorted ascending: dropping the channels of lowest rank first.
    ranked, worth = {}, 0.0
    for g, (groups, per, _) in steps.items():
        s = [max(0.0, float(x)) for x in scores[g]]
        if len(s) != per:
            raise ValueError(f"group {g}: {len(s)} scores for {per} positions")
        mean = sum(s) / per if sum(s) > 0 else 1.0
        if normalise:
            ranked[g] = sorted((x / mean if sum(s) > 0 else 1.0) * groups for x in s)
        else:
            ranked[g] = sorted(x * groups for x in s)
        worth += sum(ranked[g])
    keep = {g: per for g, (_, per, _) in steps.items()}
    lowest = {g: floor_keep(per, step, min_fraction) for g, (_, per, step) in steps.items()}
    dense_ms = total_ms(frac)
    floor_ms = total_ms({g: lowest[g] / steps[g][1] for g in steps})
    if budget_ms < floor_ms:
        raise DiffPruneError(
            f"The latency target {budget_ms:.3g} ms is below what this model can reach on this table: with every "
            f"prunable group at its floor ({min_fraction:.0%} of its width, whole steps of round_to) the prediction "
            f"is {floor_ms:.3g} ms (dense {dense_ms:.3g} ms); the rest is layers no pruning removes (the fixed "
            f"cost {c['constant_ms']:.3g} ms, the image's input and output convolutions). Choose a target of at "
            f"least {floor_ms:.3g} ms (a speedup of at most {dense_ms / floor_ms:.2f}x), or a smaller round_to."
        )
    now, lost = dense_ms, 0.0
    while now > budget_ms:
        best = None
        for g, (groups, per, step) in steps.items():
            down = _next_down(keep[g], step)
            if down < lowest[g]:
                continue
            trial = dict(frac)
            trial[g] = down / per
            saved = sum(layer_ms(layer, frac) - layer_ms(layer, trial) for layer in touching[g])
            if saved <= 0:
                continue
            cost = sum(ranked[g][per - keep[g]: per - down])  # the kept positions of lowest rank
            if best is None or cost / saved < best[0]:
                best = (cost / saved, g, down, saved, cost)
        if best is None:  # only reachable through rounding; the floor check above makes it rare
            break
        _, g, down, saved, cost = best
        keep[g], frac[g] = down, down / steps[g][1]
        now -= saved
        lost += cost
    return Choice(keep=keep, predicted_ms=total_ms(frac), dense_ms=dense_ms, floor_ms=floor_ms,
                  retained=1.0 - lost / worth if worth else 1.0)
