"""The latency model of a latency table: a UNet call's time as a function of the width kept in each prunable group.

Pure (numpy and numbers only): the measuring side (diffprune.latency.profile) feeds it, the knapsack
(diffprune.latency.knapsack) and the tests read it.

Every Conv2d/Linear layer ``L`` of the dense UNet is a row of the table: its dense MACs, the elements of its
output (activations), the resolution stage it runs at (``"32x32"``; linear layers of attention at their token
count, the time embedding's at ``"1x1"``) and the prunable groups that set its output and input widths
(diffprune.pruning.pruner._Planner's groups; ``None`` for a width the image or the text fixes). Attention's
two matrix products (Q K^T and A V) are rows too, their width the one of the group that sets to_q's output.
With ``f_g`` the fraction of group ``g``'s channels kept, one call takes

    T(f) = c0 + sum_L a[stage(L)] * MACs_L * f_out(L) * f_in(L) + b * elements_L * f_out(L)

where ``f_out(L)`` is the fraction of the group setting L's output and ``f_in(L)`` the kept fraction of L's input
channels. A layer fed a concatenation (an up block's upsampled path and its skip connection) has its input set
by several groups: its row's ``in_parts`` (group -> input channels it sets) make ``f_in(L)`` their
channel-weighted mean, the rest of ``in_channels`` fixed; a row without ``in_parts`` (tables written before
they were recorded) takes ``in_group``'s fraction alone, as those tables were fitted with.

milliseconds: ``c0`` the fixed cost (runtime overhead, the layers no group reaches), ``a[s]`` milliseconds per
GMAC at stage ``s`` (a CPU runs the 4x4 stage's small matrices far less efficiently than the 32x32 one's),
``b`` milliseconds per million activations (GroupNorm, SiLU, additions and copies, which move memory rather
than multiply). The coefficients are fitted by non-negative least squares to whole-UNet calls timed on the
target at a few width configurations (:func:`fit`), as HALP fits its lookup tables to the target, but from
whole graphs: a CPU runtime fuses and schedules across layers, so timing sub-graphs alone misses what
fusion saves.
"""

import math

FIXED = None  # a width no group sets (the image's channels, the text embedding's)
METHOD = ("whole-UNet calls timed at probe widths (a narrow uniform probe, drift-corrected against dense); per-stage ms/GMAC + ms/Melement + constant, NNLS, inputs of "
          "concatenations weighted by their parts (diffprune.latency.model)")


def fractions(keep: dict, steps: dict) -> dict:
    """Group name -> kept fraction, from ``keep`` (group -> channels kept per channel-group) and ``steps``
    (group -> (channel groups, channels per group, step), as the table stores them)."""
    return {g: min(1.0, keep.get(g, per) / per) for g, (_, per, _) in steps.items()}


def input_fraction(layer: dict, frac: dict) -> float:
    """The kept fraction of ``layer``'s input channels under group fractions ``frac`` (missing groups: dense)."""
    parts = layer.get("in_parts")
    if not parts:  # one group (or none: a fixed width, 1) sets the whole input
        return frac.get(layer["in_group"], 1.0)
    total = layer["in_channels"]
    fixed = total - sum(parts.values())  # channels no group sets (the image's, in a concatenation)
    return (fixed + sum(n * frac.get(g, 1.0) for g, n in parts.items())) / total


def groups_of(layer: dict) -> set:
    """The groups whose widths change ``layer``'s cost."""
    return ({layer["out_group"], layer["in_group"]} | set(layer.get("in_parts") or ())) - {FIXED}


def layer_terms(layer: dict, frac: dict) -> tuple:
    """(GMACs, M elements) of ``layer`` under group fractions ``frac``."""
    fo = frac.get(layer["out_group"], 1.0)  # None (fixed width): 1
    return layer["macs"] * fo * input_fraction(layer, frac) / 1e9, layer["elements"] * fo / 1e6


def layer_ms(coefficients: dict, layer: dict, frac: dict) -> float:
    """Milliseconds ``layer`` adds to a call under group fractions ``frac`` (the constant not included)."""
    gmac, melements = layer_terms(layer, frac)
    return coefficients["ms_per_gmac"][layer["stage"]] * gmac + coefficients["ms_per_melement"] * melements


def features(layers: list, stages: list, frac: dict) -> list:
    """The regressors of one configuration: ``[1, GMAC at each stage (in ``stages``' order), M elements]``."""
    row = [1.0] + [0.0] * len(stages) + [0.0]
    index = {s: i + 1 for i, s in enumerate(stages)}
    for layer in layers:
        gmac, melements = layer_terms(layer, frac)
        row[index[layer["stage"]]] += gmac
        row[-1] += melements
    return row


def predict_ms(table: dict, frac: dict) -> float:
    """Predicted milliseconds of one UNet call with group fractions ``frac`` (missing groups: dense)."""
    c = table["coefficients"]
    stages = list(c["ms_per_gmac"])
    row = features(table["layers"], stages, frac)
    weights = [c["constant_ms"]] + [c["ms_per_gmac"][s] for s in stages] + [c["ms_per_melement"]]
    return float(sum(w * x for w, x in zip(weights, row)))


def fit(layers: list, stages: list, configs: list, measured_ms: list) -> dict:
    """Coefficients (``constant_ms``, ``ms_per_gmac`` by stage, ``ms_per_melement``) fitted by non-negative
    least squares to ``measured_ms`` of the group-fraction dicts ``configs``, each row weighted by
    1 / its time so that the fit minimises relative, not absolute, error."""
    import numpy as np
    from scipy.optimize import nnls

    x = np.array([features(layers, stages, f) for f in configs], dtype=np.float64)
    y = np.array(measured_ms, dtype=np.float64)
    w = 1.0 / y
    solution, _ = nnls(x * w[:, None], y * w)
    return {"constant_ms": float(solution[0]),
            "ms_per_gmac": {s: float(v) for s, v in zip(stages, solution[1:-1])},
            "ms_per_melement": float(solution[-1])}


def errors(predicted: list, measured: list) -> dict:
    """Relative errors ``(predicted - measured) / measured``, with their median and maximum of absolute values."""
    rel = [(p - m) / m for p, m in zip(predicted, measured)]
    absolute = sorted(abs(r) for r in rel)
    n = len(absolute)
    median = (absolute[(n - 1) // 2] + absolute[n // 2]) / 2 if n else math.nan
    return {"relative": [round(r, 4) for r in rel], "median_abs": round(median, 4),
            "max_abs": round(max(absolute), 4) if n else math.nan}
