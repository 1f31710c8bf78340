"""The pure part of selection: rows of numbers in, choices out (Pareto front, choice under a budget, the
naive choices), plus the latency model and the checks of a grid; nothing here samples or times anything.
"""

import statistics
from dataclasses import dataclass

import numpy as np

from ..errors import DiffPruneError
from ..runtime.formats import SCHEDULER_CLASSES

# The model's own scheduler serves as the "auto" reference when it is deterministic (no noise per step).
DETERMINISTIC = {cls: name for cls, name in SCHEDULER_CLASSES.items() if name in ("ddim", "dpm-solver++")}


@dataclass
class Row:
    """One configuration with its quality and latency (per image or per batch, as the budget is)."""

    name: str
    latency_ms: float  # what choices use: measured where measured, else predicted
    quality: float  # the ranking score, higher is better: SSIM vs the dense reference, or -FID (rank="fid")
    params: int | None = None
    macs: int | None = None
    artifact: str = ""
    psnr_db: float | None = None
    model: str = ""
    backend: str = ""
    scheduler: str = ""
    steps: int = 0
    batch: int = 1
    guidance: float | None = None  # for text-conditioned pipelines; None for unconditional models
    predicted_ms: float | None = None
    measured_ms: float | None = None
    fid: float | None = None
    ssim: float | None = None
    cache_interval: int = 1  # step caching (DeepCache): the whole UNet every N-th step; 1 is off

    @property
    def measured(self) -> bool:
        return self.measured_ms is not None


def config_name(model, backend, scheduler, steps, batch, cache_interval: int = 1) -> str:
    cached = f" · cache {cache_interval}" if cache_interval > 1 else ""
    return f"{model} · {backend} · {scheduler} x{steps}{cached} · b{batch}"  # no "|": names go into markdown tables


def pareto(rows) -> list:
    """Names of rows no other row beats on both latency (lower) and quality (higher)."""
    front = []
    for r in rows:
        dominated = any((o.latency_ms <= r.latency_ms and o.quality >= r.quality) and
                        (o.latency_ms < r.latency_ms or o.quality > r.quality) for o in rows if o is not r)
        if not dominated:
            front.append(r.name)
    return front


def pick(rows, budget_ms: float) -> dict:
    """Choose the highest-quality row within ``budget_ms``; ties go to the faster, then the smaller model.

    Returns ``{"choice", "fits", "pareto", "closest", "over_by_ms", "message"}``; ``choice`` is None
    when nothing fits, and ``message`` then names the closest candidate and how far it is over.
    """
    if not rows:
        raise DiffPruneError("No candidates to choose from: give model folders, exports or --sweep fractions.")
    if not budget_ms > 0:
        raise DiffPruneError(f"budget {budget_ms} ms must be positive.")
    fits = [r for r in rows if r.latency_ms <= budget_ms]
    front = pareto(rows)
    if fits:
        best = sorted(fits, key=lambda r: (-round(r.quality, 9), r.latency_ms, r.params or 0, r.name))[0]
        return {"choice": best.name, "fits": [r.name for r in fits], "pareto": front, "closest": best.name,
                "over_by_ms": 0.0, "message": f"{best.name}: the best quality within {budget_ms:g} ms, at "
                                              f"{best.latency_ms:.1f} ms"}
    closest = min(rows, key=lambda r: r.latency_ms)
    over = closest.latency_ms - budget_ms
    return {"choice": None, "fits": [], "pareto": front, "closest": closest.name, "over_by_ms": over,
            "message": f"Nothing fits {budget_ms:g} ms: the fastest candidate, {closest.name}, takes "
                       f"{closest.latency_ms:.1f} ms ({over:.1f} ms, {over / budget_ms:.0%} over). Prune further "
                       "(a smaller --sweep fraction), use fewer steps, a faster backend or batch, or raise the budget."}


def naive_families(rows, default: dict) -> dict:
    """The two choices a user makes without a planner, as row subsets to pick from:

    - "dense, fewer steps": the dense model at the default scheduler, backend and batch, any steps;
    - "pruned, default steps": any pruned model at the default scheduler, steps, backend and batch.
    """
    same = [r for r in rows if r.scheduler == default["scheduler"] and r.backend == default["backend"]
            and r.batch == default["batch"] and r.cache_interval == 1]
    return {"dense, fewer steps": [r for r in same if r.model == "dense"],
            "pruned, default steps": [r for r in same if r.model != "dense" and r.steps == default["steps"]]}


def decide(rows, budgets, default: dict) -> dict:
    """For each budget: the joint choice and the two naive ones (see ``naive_families``)."""
    out = {}
    for budget in budgets:
        entry = {"joint": pick(rows, budget)}
        for label, family in naive_families(rows, default).items():
            entry[label] = pick(family, budget) if family else None
        out[f"{budget:g}"] = entry
    return out


def chosen_names(decisions: dict) -> set:
    return {d["choice"] for entry in decisions.values() for d in entry.values() if d and d["choice"]}


@dataclass
class LatencyModel:
    """End-to-end time of one batch, from one probe of a model on a backend (see selection/select.py):

        predicted(scheduler, steps) = steps x unet_call + sampler(scheduler, steps) + other

    With step caching at interval N, the steps 0, N, 2N, ... are full UNet calls and the rest shallow ones
    (``shallow_ms``, from a second probe):

        predicted(scheduler, steps, N) = full(steps, N) x unet_call + (steps - full) x shallow_call + ...
    """

    unet_ms: float  # one UNet call at this batch
    other_ms: float  # model-side time outside the UNet calls, per batch
    sampler_ms: dict  # scheduler -> (fixed ms, ms per step), from a model that costs nothing
    shallow_ms: float | None = None  # one shallow UNet call (step caching), where probed

    def predict(self, scheduler: str, steps: int, cache_interval: int = 1) -> float:
        fixed, per_step = self.sampler_ms[scheduler]
        full = len(range(0, steps, cache_interval))
        if full < steps and self.shallow_ms is None:
            raise DiffPruneError("This latency model has no shallow UNet time; probe with the cache intervals.")
        unet = full * self.unet_ms + (steps - full) * (self.shallow_ms or 0.0)
        return unet + fixed + steps * per_step + self.other_ms


def make_rows(quality: dict, latency: dict, schedulers, step_list, per: str, rank: str, metas: dict,
              artifacts: dict, quality_from=None, intervals=(1,)) -> list:
    """One :class:`Row` per (model, backend, batch, scheduler, steps, cache interval): the quality scores
    ``(model, backend, scheduler, steps, interval) -> {"ssim", "psnr_db"[, "fid"]}`` (the interval may be left
    out where it is 1) beside the latency each ``latency[(model, backend)][batch]`` predicts, per image or per
    batch as ``per`` says."""
    rows = []
    for (m, b), model in latency.items():
        for batch_size, lm in model.items():
            for s, k, c in ((s, k, c) for s in schedulers for k in step_list for c in intervals):
                q = quality[(m, b, s, k, c)] if (m, b, s, k, c) in quality or c > 1 else quality[(m, b, s, k)]
                divisor = batch_size if per == "image" else 1
                predicted = lm.predict(s, k, c) / divisor
                if rank == "fid" and q.get("fid") is None:
                    raise DiffPruneError(f"rank fid: {quality_from} holds no FID scores; rank ssim, or "
                                         "measure quality again with --features.")
                score = q["ssim"] if rank == "ssim" else -q["fid"]
                rows.append(Row(config_name(m, b, s, k, batch_size, c), predicted, score,
                                metas[m].get("params"), metas[m].get("macs"), str(artifacts[m]),
                                q["psnr_db"], m, b, s, k, batch_size, None, predicted, None, q.get("fid"),
                                q["ssim"], c))
    return rows


def first_to_measure(rows, budgets, default: dict, margin: float = 1.1) -> set:
    """Names of the rows to measure end to end first: the predicted Pareto front and every choice, also
    those made as if the predictions ran ``margin`` high, so a configuration that fits only once measured
    is not missed (later rounds measure whatever the measured latencies make the choice)."""
    return set(pareto(rows)) | chosen_names(decide(rows, budgets, default)) | chosen_names(
        decide(rows, [b * margin for b in budgets], default))


def prediction_error(measured) -> dict:
    """How far the predicted latencies of the ``measured`` rows were off, relative to the measured ones."""
    errors = [r.predicted_ms / r.measured_ms - 1 for r in measured]
    return {"n": len(errors), "median_abs": statistics.median(abs(e) for e in errors) if errors else None,
            "max_abs": max((abs(e) for e in errors), default=None)}


def runnable_pairs(kinds: dict, backends) -> list:
    """(model, backend) for each model (name -> artifact kind: onnx, openvino, tensorrt) and each backend that
    runs it (an engine only on trt); a model no backend runs is refused."""
    from ..runtime.runners import incompatibility

    pairs = [(m, b) for m in kinds for b in (backends if kinds[m] != "tensorrt" else ["trt"])
             if incompatibility(kinds[m], b) is None]
    missing = [m for m in kinds if not any(pm == m for pm, _ in pairs)]
    if missing:
        raise DiffPruneError(f"No backend in {', '.join(backends)} runs {missing[0]!r} ({kinds[missing[0]]}); add "
                             f"{'trt' if kinds[missing[0]] == 'tensorrt' else 'openvino'} to --backend.")
    return pairs


def parse_reference(text: str, scheduler_config: dict) -> tuple:
    """``"auto"`` -> the model's deterministic scheduler (else ddim) at 100 steps; ``"ddim:100"`` as given."""
    from ..runtime.schedulers import SCHEDULERS

    if text == "auto":
        return DETERMINISTIC.get(scheduler_config.get("_class_name"), "ddim"), 100
    name, _, steps = str(text).partition(":")
    if name not in SCHEDULERS or not steps.isdigit() or int(steps) < 1:
        raise DiffPruneError(f"Reference {text!r} is not SCHEDULER:STEPS with a scheduler in {', '.join(SCHEDULERS)} "
                             "and steps >= 1 (e.g. ddim:100), nor auto.")
    return name, int(steps)


def check_grid(schedulers, steps, backends, batches, budgets, per="image", n=16, runs=10, intervals=(1,)) -> list:
    """Refuse a bad grid before anything is exported or measured; returns the backends checked to be runnable
    here (``auto`` kept as it is: :func:`diffprune.selection.select` measures it on the dense export)."""
    from ..runtime.runners import check_available
    from ..runtime.schedulers import SCHEDULERS

    for name, values in (("scheduler", schedulers), ("steps", steps), ("backend", backends), ("batch", batches),
                         ("budget", budgets)):
        if not values:
            raise DiffPruneError(f"The {name} list is empty; give at least one value.")
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        raise DiffPruneError(f"Unknown scheduler {unknown[0]!r} in the grid; allowed: {', '.join(SCHEDULERS)}.")
    for name, values in (("steps", steps), ("batch", batches), ("cache interval", intervals)):
        bad = [v for v in values if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1]
        if bad or not values:
            raise DiffPruneError(f"{name} {bad[0] if bad else values!r} in the grid is invalid: give whole numbers >= 1, "
                                 f"e.g. {dict(steps='10,20,50', batch='1,8').get(name, '1,2,3')}.")
    bad = [b for b in budgets if not b > 0]
    if bad:
        raise DiffPruneError(f"budget {bad[0]} ms must be positive.")
    if per not in ("image", "batch"):
        raise DiffPruneError(f"per {per!r} is unknown; allowed: image, batch.")
    if n < 1 or runs < 1:
        raise DiffPruneError(f"n {n} and runs {runs} must be at least 1.")
    resolved = []
    for b in backends:
        spec = b if b == "auto" else check_available(b)  # auto is measured later, on the dense export
        if spec not in resolved:
            resolved.append(spec)
    return resolved


def check_options(rank: str, features, quality_from, fid_reference, sweep) -> None:
    """Refuse a ranking, FID reference or sweep fraction that cannot work, before anything is exported."""
    if rank not in ("ssim", "fid") or (rank == "fid" and not (features or quality_from)):
        raise DiffPruneError(f"rank {rank!r}: allowed are ssim, and fid with a feature network (--features, e.g. "
                             "builtin:digits-features).")
    if fid_reference and not features:
        raise DiffPruneError("FID against reference images needs a feature network: add --features (for digits, "
                             "builtin:digits-features).")
    for f in sweep:
        if not 0 < f < 1:
            raise DiffPruneError(f"sweep fraction {f} is out of range; give fractions of dense MACs kept, 0 < f < 1.")


def check_settings(schedulers, step_counts, scheduler_config):
    """Every scheduler accepts every step count with this model's schedule (before any sampling)."""
    from ..runtime.schedulers import make_scheduler

    for s in schedulers:
        for k in sorted(set(step_counts)):
            try:
                make_scheduler(s, scheduler_config).set_timesteps(k)
            except DiffPruneError as e:
                raise DiffPruneError(f"{s} at {k} steps cannot run on this model's schedule: {e}") from None
