"""Latency-budgeted selection over the whole deployment configuration: model (pruning level) x
scheduler x steps x backend x batch.

1. Quality. Every model samples the same seeds with every scheduler and step count on every
   backend, scored against the dense model at a reference setting (default: DDIM, or the model's own
   deterministic scheduler, at 100 steps): SSIM and PSNR, and FID in a feature network's space when
   one is given. Sampling is cheap next to timing, so the whole grid is sampled.
2. Latency, predicted. Each (model, backend, batch) is served by a process of its own and timed once
   at a probe setting; that gives its UNet call time. The sampler's own cost for each scheduler and
   step count is timed with a model that costs nothing (numpy only). End to end, per batch:

       predicted(scheduler, steps) = steps x unet_call + sampler(scheduler, steps) + other

   where ``other`` is what the probe's model-side time outside the UNet calls adds (input copies).
3. Latency, measured. The predicted Pareto front (quality against latency), the choice for each
   budget and the two naive choices (dense with fewer steps; pruned at the default steps) are run end
   to end in those processes, alternating, as `diffprune bench` does. Choices are then made again
   with the measured latencies, and any newly chosen configuration that was not yet measured is
   measured, until every choice stands on a measurement. The prediction error is reported.

When nothing fits, the fastest measured configuration is named with its excess, and nothing is chosen.
"""

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffPruneError
from ..runtime.formats import DEPLOY_FORMAT, DEPLOY_JSON, ENGINE_JSON, MODEL_JSON, SCHEDULER_CLASSES

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

    @property
    def measured(self) -> bool:
        return self.measured_ms is not None


def config_name(model, backend, scheduler, steps, batch) -> str:
    return f"{model} · {backend} · {scheduler} x{steps} · b{batch}"  # no "|": names go into markdown tables


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
            and r.batch == default["batch"]]
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


def check_grid(schedulers, steps, backends, batches, budgets, per="image", n=16, runs=10) -> list:
    """Refuse a bad grid before anything is exported or measured; returns the backends resolved and
    checked to be runnable here (auto -> openvino where installed, else ort-cpu)."""
    from ..runtime.runners import check_available
    from ..runtime.schedulers import SCHEDULERS

    for name, values in (("scheduler", schedulers), ("steps", steps), ("backend", backends), ("batch", batches),
                         ("budget", budgets)):
        if not values:
            raise DiffPruneError(f"The {name} list is empty; give at least one value.")
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown:
        raise DiffPruneError(f"Unknown scheduler {unknown[0]!r} in the grid; allowed: {', '.join(SCHEDULERS)}.")
    for name, values in (("steps", steps), ("batch", batches)):
        bad = [v for v in values if not isinstance(v, (int, np.integer)) or v < 1]
        if bad:
            raise DiffPruneError(f"{name} {bad[0]!r} in the grid is invalid: give whole numbers >= 1, e.g. "
                                 f"{'10,20,50' if name == 'steps' else '1,8'}.")
    bad = [b for b in budgets if not b > 0]
    if bad:
        raise DiffPruneError(f"budget {bad[0]} ms must be positive.")
    if per not in ("image", "batch"):
        raise DiffPruneError(f"per {per!r} is unknown; allowed: image, batch.")
    if n < 1 or runs < 1:
        raise DiffPruneError(f"n {n} and runs {runs} must be at least 1.")
    resolved = []
    for b in backends:
        spec = check_available(b)
        if spec not in resolved:
            resolved.append(spec)
    return resolved


@dataclass
class LatencyModel:
    """End-to-end time of one batch, from one probe of a model on a backend (see the module docstring)."""

    unet_ms: float  # one UNet call at this batch
    other_ms: float  # model-side time outside the UNet calls, per batch
    sampler_ms: dict  # scheduler -> (fixed ms, ms per step), from a model that costs nothing

    def predict(self, scheduler: str, steps: int) -> float:
        fixed, per_step = self.sampler_ms[scheduler]
        return steps * self.unet_ms + fixed + steps * per_step + self.other_ms


def sampler_costs(schedulers, steps, scheduler_config, in_channels, sample_size, batch) -> dict:
    """scheduler -> (fixed ms, ms per step) of the sampler alone, fitted at the grid's fewest and most steps."""
    from ..runtime.bench import sampler_seconds

    lo, hi = min(steps), max(steps)
    hi = hi if hi > lo else lo + 10
    out = {}
    for s in schedulers:
        t_lo = sampler_seconds(s, scheduler_config, in_channels, sample_size, batch, lo) * 1e3
        t_hi = sampler_seconds(s, scheduler_config, in_channels, sample_size, batch, hi) * 1e3
        per_step = max(0.0, (t_hi - t_lo) / (hi - lo))
        out[s] = (max(0.0, t_lo - lo * per_step), per_step)
    return out


def select(dense, candidates=(), sweep=(), budget_ms=100.0, per: str = "image", backend="auto", batch=1,
           steps=50, scheduler="ddim", reference: str = "auto", n: int = 16, runs: int = 10, probe_runs: int = 5,
           features=None, method: str = "diff-pruning", data: str = "builtin:digits", finetune_steps: int = 0,
           calibration_images: int = 64, max_timesteps: int | None = None, threads: int | None = None,
           quality_from=None, fid_reference=None, rank: str = "ssim", out="select", overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Choose the configuration with the best quality within each budget; write ``out``/select.{json,md,png}
    and deploy.json (the choice for the first budget; one deploy-<budget>ms.json per budget when several).

    Every axis takes one value or a list: ``budget_ms``, ``backend`` (runtime backend specs, or auto),
    ``batch``, ``steps``, ``scheduler``. The first scheduler and backend, the most steps and the first
    batch are the "default setting" the naive choices keep. ``features``: an ONNX feature network; FID
    against the dense reference images is then reported beside SSIM (ranking stays on SSIM).
    ``fid_reference``: real images (folder, .npz, builtin:digits) or their statistics: FID is then against
    them instead of the dense reference images. ``rank``: "ssim" (default) or "fid" (needs ``features``).
    ``quality_from``: an earlier select.json whose quality scores are reused instead of sampling (matched by
    model name, backend, scheduler and steps): quality measured once, latency planned on each target machine.
    """
    from .._io import atomic_dir, check_writable

    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    budgets, schedulers, step_list, batches = as_list(budget_ms), as_list(scheduler), as_list(steps), as_list(batch)
    backends = check_grid(schedulers, step_list, as_list(backend), batches, budgets, per, n, runs)
    if rank not in ("ssim", "fid") or (rank == "fid" and not (features or quality_from)):
        raise DiffPruneError(f"rank {rank!r}: allowed are ssim, and fid with a feature network (--features, e.g. "
                             "builtin:digits-features).")
    if fid_reference and not features:
        raise DiffPruneError("FID against reference images needs a feature network: add --features (for digits, "
                             "builtin:digits-features).")
    for f in sweep:
        if not 0 < f < 1:
            raise DiffPruneError(f"sweep fraction {f} is out of range; give fractions of dense MACs kept, 0 < f < 1.")
    check_writable(out, overwrite)
    default = {"scheduler": schedulers[0], "steps": max(step_list), "backend": backends[0], "batch": batches[0]}
    started = time.perf_counter()

    work = Path(str(out) + ".work")  # exports and sweep models, reusable across runs
    work.mkdir(parents=True, exist_ok=True)
    export_batches = (1, max(max(batches), 8), max(max(batches), 16))
    artifacts = {"dense": _as_artifact(dense, work / "dense-onnx", export_batches, log)}
    for c in candidates:
        artifacts[Path(c).name] = _as_artifact(c, work / f"{Path(c).name}-onnx", export_batches, log)
    for f in sweep:
        artifacts[f"macs-{f:g}"] = _sweep_member(dense, f, work, method, data, finetune_steps, calibration_images,
                                                 max_timesteps, export_batches, progress, log)

    from ..runtime.artifact import describe
    from ..runtime.runners import incompatibility

    kinds = {name: describe(path)[0] for name, path in artifacts.items()}
    # An engine's engine.json holds the model's spec under "model"; an export's model.json is the spec.
    metas = {name: (lambda d: d[2]["model"] if d[0] == "tensorrt" else d[2])(describe(path))
             for name, path in artifacts.items()}
    pairs = [(m, b) for m in artifacts for b in (backends if kinds[m] != "tensorrt" else ["trt"])
             if incompatibility(kinds[m], b) is None]
    missing = [m for m in artifacts if not any(pm == m for pm, _ in pairs)]
    if missing:
        raise DiffPruneError(f"No backend in {', '.join(backends)} runs {missing[0]!r} ({kinds[missing[0]]}); add "
                             f"{'trt' if kinds[missing[0]] == 'tensorrt' else 'openvino'} to --backend.")
    ref_setting = parse_reference(reference, metas["dense"].get("scheduler", {}))
    _check_settings(schedulers, step_list + [ref_setting[1]], metas["dense"].get("scheduler", {}))

    mark = time.perf_counter()
    timing = {"models_s": mark - started}  # exports, and the sweep's pruning and fine-tuning
    if quality_from:
        quality, ref_setting, earlier = _reuse_quality(quality_from, pairs, schedulers, step_list)
        n, features, fid_reference = earlier.get("n", n), earlier.get("features"), earlier.get("fid_reference")
    else:
        quality = _quality(artifacts, pairs, schedulers, step_list, ref_setting, n, threads, features,
                           fid_reference, progress, log)
    timing["quality_s"], mark = time.perf_counter() - mark, time.perf_counter()
    latency, processes = _probe(artifacts, pairs, batches, schedulers, step_list, metas, probe_runs, threads, log)
    timing["probe_s"], mark = time.perf_counter() - mark, time.perf_counter()
    try:
        rows = []
        for (m, b), model in latency.items():
            for batch_size, lm in model.items():
                for s in schedulers:
                    for k in step_list:
                        q = quality[(m, b, s, k)]
                        divisor = batch_size if per == "image" else 1
                        predicted = lm.predict(s, k) / divisor
                        if rank == "fid" and q.get("fid") is None:
                            raise DiffPruneError(f"rank fid: {quality_from} holds no FID scores; rank ssim, or "
                                                 "measure quality again with --features.")
                        score = q["ssim"] if rank == "ssim" else -q["fid"]
                        rows.append(Row(config_name(m, b, s, k, batch_size), predicted, score,
                                        metas[m].get("params"), metas[m].get("macs"), str(artifacts[m]),
                                        q["psnr_db"], m, b, s, k, batch_size, None, predicted, None, q.get("fid"),
                                        q["ssim"]))
        by_name = {r.name: r for r in rows}
        predicted_front = pareto(rows)
        # Also what would be chosen if predictions ran 10 % high, so a configuration that fits only once
        # measured is not missed; later rounds measure whatever the measured latencies make the choice.
        to_measure = set(predicted_front) | chosen_names(decide(rows, budgets, default)) | chosen_names(
            decide(rows, [b * 1.1 for b in budgets], default))
        rounds = 0
        while to_measure:
            rounds += 1
            log(f"measuring {len(to_measure)} configurations end to end (round {rounds})")
            _verify([by_name[name] for name in sorted(to_measure)], processes, runs, per, progress)
            decisions = decide(rows, budgets, default)
            to_measure = {name for name in chosen_names(decisions) if not by_name[name].measured}
    finally:
        for worker in processes.values():
            worker.close()
    timing["verify_s"] = time.perf_counter() - mark
    measured = [r for r in rows if r.measured]
    errors = [r.predicted_ms / r.measured_ms - 1 for r in measured]
    decisions = decide(rows, budgets, default)
    result = {
        "budgets_ms": budgets, "per": per, "backends": backends, "batches": batches, "steps": step_list,
        "schedulers": schedulers, "reference": {"model": "dense", "backend": backends[0], "scheduler": ref_setting[0],
                                                "steps": ref_setting[1]},
        "quality_from": str(quality_from) if quality_from else None, "rank": rank,
        "fid_reference": str(fid_reference) if fid_reference else None, "default": default, "n": n, "runs": runs, "probe_runs": probe_runs, "features": str(features) if features else None,
        "rows": [asdict(r) for r in rows], "pareto": pareto(rows), "pareto_measured": pareto(measured),
        "decisions": decisions, "verification_rounds": rounds,
        "prediction_error": {"n": len(errors), "median_abs": statistics.median(abs(e) for e in errors) if errors else None,
                             "max_abs": max((abs(e) for e in errors), default=None)},
        "seconds": time.perf_counter() - started, "timing": timing, "versions": _versions(),
        "latency_model": {f"{m} · {b} · b{bs}": asdict(lm) for (m, b), model in latency.items() for bs, lm in model.items()},
    }
    first = decisions[f"{budgets[0]:g}"]["joint"]
    result.update(first)  # choice, fits, closest, over_by_ms, message of the first budget, as before
    text = report(result, rows)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "select.json").write_text(json.dumps(result, indent=1))
        (tmp / "select.md").write_text(text)
        plot(rows, decisions, budgets, per, tmp / "select.png", rank)
        for budget in budgets:
            choice = decisions[f"{budget:g}"]["joint"]["choice"]
            if choice:
                record = deploy_record(by_name[choice], budget, per, Path(out))
                names = [DEPLOY_JSON] if budget == budgets[0] else []
                names += [f"deploy-{budget:g}ms.json"] if len(budgets) > 1 else []
                for name in names:
                    (tmp / name).write_text(json.dumps(record, indent=1))
    log(text)
    return result


def _check_settings(schedulers, step_counts, scheduler_config):
    """Every scheduler accepts every step count with this model's schedule (before any sampling)."""
    from ..runtime.schedulers import make_scheduler

    for s in schedulers:
        for k in sorted(set(step_counts)):
            try:
                make_scheduler(s, scheduler_config).set_timesteps(k)
            except DiffPruneError as e:
                raise DiffPruneError(f"{s} at {k} steps cannot run on this model's schedule: {e}") from None


def _quality(artifacts, pairs, schedulers, step_list, ref_setting, n, threads, features, fid_reference,
             progress, log) -> dict:
    """(model, backend, scheduler, steps) -> {"ssim", "psnr_db"[, "fid"]} against the dense reference images
    (FID: against ``fid_reference`` where given)."""
    from tqdm import tqdm

    from .._io import quiet
    from ..evaluation.metrics import consistency, feature_statistics, frechet_distance
    from ..runtime import Sampler, make_scheduler, open_runner

    def images(runner, s, k):  # at the largest batch the export takes: a seed's image does not depend on it
        return Sampler(runner, make_scheduler(s, runner.scheduler_config)).generate(n, seed=0, steps=k)

    ref_backend = pairs[0][1] if pairs[0][0] == "dense" else next(b for m, b in pairs if m == "dense")
    with open_runner(artifacts["dense"], ref_backend, threads=threads) as runner:
        reference = images(runner, *ref_setting)
    feats = ref_stats = None
    if features:
        from ..evaluation.metrics import OnnxFeatures

        from ..evaluation.metrics import reference_statistics

        feats = OnnxFeatures(features)
        ref_stats = (reference_statistics(fid_reference, feats, reference.shape[1:3], reference.shape[3])
                     if fid_reference else feature_statistics(feats(reference)))
    out = {}
    bar = tqdm(total=len(pairs) * len(schedulers) * sum(step_list), unit="step", desc="quality", disable=quiet(progress))
    for m, b in pairs:
        with open_runner(artifacts[m], b, threads=threads) as runner:
            for s in schedulers:
                for k in step_list:
                    got = images(runner, s, k)
                    q = consistency(got, reference)
                    q["psnr_db"] = q["psnr_db"] if np.isfinite(q["psnr_db"]) else None
                    if feats is not None:
                        q["fid"] = frechet_distance(*feature_statistics(feats(got)), *ref_stats)
                    out[(m, b, s, k)] = q
                    bar.update(k)
    bar.close()
    log(f"quality: {len(out)} configurations sampled against dense at {ref_setting[0]} x{ref_setting[1]} on {ref_backend}")
    return out


def _reuse_quality(path, pairs, schedulers, step_list) -> tuple:
    """Quality scores and reference setting from an earlier select.json, for every configuration needed."""
    from ..runtime.formats import read_json

    earlier = read_json(Path(path))
    if not isinstance(earlier, dict) or not isinstance(earlier.get("rows"), list):
        raise DiffPruneError(f"{str(path)!r} is not a select.json (no rows); give the one `diffprune select` wrote.")
    scores = {(r["model"], r["backend"], r["scheduler"], r["steps"]): {
        "ssim": r.get("ssim", r["quality"]), "psnr_db": r.get("psnr_db"), "fid": r.get("fid")} for r in earlier["rows"]}
    needed = [(m, b, s, k) for m, b in pairs for s in schedulers for k in step_list]
    gone = [key for key in needed if key not in scores]
    if gone:
        have = sorted({key[0] for key in scores})
        raise DiffPruneError(f"{str(path)!r} has no quality score for {' · '.join(map(str, gone[0]))} ({len(gone)} of "
                             f"{len(needed)} configurations missing). It holds the models {', '.join(have)}: name the "
                             "candidates alike and keep the schedulers, steps and backends within its grid.")
    ref = earlier.get("reference", {})
    return {key: scores[key] for key in needed}, (ref.get("scheduler"), ref.get("steps")), earlier


def _probe(artifacts, pairs, batches, schedulers, step_list, metas, probe_runs, threads, log) -> tuple:
    """One process per (model, backend, batch), timed at a probe setting -> latency models, and the processes
    (kept open for the end-to-end verification)."""
    from ..runtime.bench import SettingCase, measure, worker_case

    probe = (schedulers[0], min(10, max(step_list)))
    processes, cases = {}, []
    try:
        for m, b in pairs:
            for bs in batches:
                worker = worker_case(f"{m} · {b} · b{bs}", artifacts[m], b, probe[0], probe[1], bs, threads)
                processes[(m, b, bs)] = worker
                cases.append(SettingCase(worker.name, worker, {"scheduler": probe[0], "steps": probe[1]}, bs))
        log(f"probing {len(cases)} model/backend/batch processes at {probe[0]} x{probe[1]}, {probe_runs} runs each")
        timing = measure(cases, batches[0], runs=probe_runs, warmup=2)
    except BaseException:
        for worker in processes.values():
            worker.close()
        raise
    latency = {}
    for (m, b, bs), worker in processes.items():
        t = timing[worker.name]
        meta = metas[m]
        size = meta.get("sample_size")
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        costs = sampler_costs(schedulers, step_list, meta.get("scheduler", {}), meta.get("in_channels"), size, bs)
        unet = t["unet_ms"]["median"] / probe[1]
        other = t["e2e_ms"]["median"] - t["unet_ms"]["median"] - (costs[probe[0]][0] + probe[1] * costs[probe[0]][1])
        latency.setdefault((m, b), {})[bs] = LatencyModel(unet, max(0.0, other), costs)
    return latency, processes


def _verify(rows, processes, runs, per, progress):
    """Measure ``rows`` end to end in their model's process, alternating; sets measured_ms and latency_ms."""
    from ..runtime.bench import SettingCase, measure

    cases = [SettingCase(r.name, processes[(r.model, r.backend, r.batch)], {"scheduler": r.scheduler, "steps": r.steps},
                         r.batch) for r in rows]
    timing = measure(cases, 1, runs=runs, warmup=1)
    for r in rows:
        r.measured_ms = timing[r.name]["e2e_ms"]["median"] / (r.batch if per == "image" else 1)
        r.latency_ms = r.measured_ms


def deploy_record(row: Row, budget_ms: float, per: str, out: Path) -> dict:
    return {
        "format": DEPLOY_FORMAT,
        "artifact": _portable(Path(row.artifact), out),
        "backend": row.backend, "scheduler": row.scheduler, "steps": row.steps, "batch": row.batch,
        "guidance": row.guidance, "model": row.model, "budget_ms": budget_ms, "per": per,
        "latency_ms": {"measured": row.measured_ms, "predicted": row.predicted_ms},
        "quality": {"ssim_vs_dense": row.ssim, "psnr_db": row.psnr_db, "fid": row.fid},
        "made_by": {"tool": "diffprune select", "versions": _versions()},
    }


def _portable(artifact: Path, out: Path) -> str:
    """Relative to the report folder when the artifact sits beside it (the .work folder), so the two can
    move together; absolute otherwise."""
    artifact, base = artifact.resolve(), out.resolve()
    rel = os.path.relpath(artifact, base)
    return rel if artifact.is_relative_to(base.parent) else str(artifact)


def _versions() -> dict:
    from ..evaluation.benchmark import installed_versions

    return installed_versions()


def _fmt(v, digits=1):
    return "" if v is None else f"{v:.{digits}f}"


def report(result: dict, rows) -> str:
    """select.md: per budget the joint choice beside the naive ones, then the measured configurations."""
    per = result["per"]
    ref = result["reference"]
    lines = [f"# Selection over {len(rows)} configurations (latency per {per})", "",
             f"Quality: SSIM vs dense at {ref['scheduler']} x{ref['steps']} on {ref['backend']} from the same "
             f"{result['n']} seeds. Latency predicted for all from one probe per model/backend/batch, measured end to "
             f"end (median of {result['runs']} alternating runs) for the Pareto front and every choice below.", "",
             (f"FID in the feature space of {result['features']} against "
              f"{result['fid_reference'] or 'the dense reference images'}; " if result["features"] else "")
             + f"choices rank by {result['rank'].upper()}.", "",
             "| budget ms | which | configuration | SSIM | FID | latency ms (measured) |", "|---|---|---|---|---|---|"]
    by_name = {r.name: r for r in rows}
    for budget, entry in result["decisions"].items():
        for label in ("joint", "dense, fewer steps", "pruned, default steps"):
            d = entry.get(label)
            if d is None:
                continue
            r = by_name.get(d["choice"]) if d["choice"] else None
            lines.append(f"| {budget} | {label} | {r.name if r else 'nothing fits'} | {_fmt(r and r.ssim, 4)} | "
                         f"{_fmt(r and r.fid, 2)} | {_fmt(r and r.measured_ms)} |")
    err = result["prediction_error"]
    if err["n"]:
        lines += ["", f"Prediction error over {err['n']} measured configurations: median {err['median_abs']:.1%}, "
                      f"largest {err['max_abs']:.1%}."]
    lines += ["", "## Measured configurations (Pareto front of the measured ones marked)", "",
              "| configuration | params (M) | MACs (M) | SSIM | PSNR dB | FID | predicted ms | measured ms | front |",
              "|---|---|---|---|---|---|---|---|---|"]
    front = set(result["pareto_measured"])
    for r in sorted((r for r in rows if r.measured), key=lambda r: r.measured_ms):
        lines.append(f"| {r.name} | {(r.params or 0) / 1e6:.2f} | {(r.macs or 0) / 1e6:.1f} | {_fmt(r.ssim, 4)} | "
                     f"{_fmt(r.psnr_db, 2)} | {_fmt(r.fid, 2)} | {_fmt(r.predicted_ms)} | {_fmt(r.measured_ms)} | "
                     f"{'yes' if r.name in front else ''} |")
    lines += ["", result["message"]]
    return "\n".join(lines) + "\n"


def plot(rows, decisions, budgets, per, path, rank: str = "ssim") -> bool:
    """Quality against latency: every configuration (predicted, small), the measured ones (large), the
    budget lines and the choices (stars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = sorted({r.model for r in rows}, key=lambda m: (m != "dense", m))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    markers = dict(zip(sorted({r.scheduler for r in rows}), "osD^v"))
    chosen = chosen_names({k: {"joint": v["joint"]} for k, v in decisions.items()})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        ax.scatter(r.latency_ms, r.quality, s=60 if r.measured else 12, marker=markers[r.scheduler],
                   color=colours[r.model], alpha=1.0 if r.measured else 0.35, edgecolors="none")
    front = sorted((r for r in rows if r.measured and r.name in pareto([x for x in rows if x.measured])),
                   key=lambda r: r.latency_ms)
    ax.plot([r.latency_ms for r in front], [r.quality for r in front], color="tab:gray", lw=1, alpha=0.6)
    for r in rows:
        if r.name in chosen:
            ax.scatter(r.latency_ms, r.quality, s=220, marker="*", color="tab:red", zorder=5)
            ax.annotate(f"{r.model}, {r.backend}, {r.scheduler} x{r.steps}", (r.latency_ms, r.quality),
                        textcoords="offset points", xytext=(6, -10), fontsize=7)
    for b in budgets:
        ax.axvline(b, color="tab:red", linestyle="--", lw=0.8)
    for m in models:
        ax.scatter([], [], color=colours[m], label=m)
    for s, mk in markers.items():
        ax.scatter([], [], color="black", marker=mk, label=s)
    ax.set_xscale("log")
    ax.set_xlabel(f"end-to-end latency, ms per {per} (large: measured, small: predicted; dashed: budgets)")
    if rank == "fid":
        ax.set_ylabel("FID (higher up = lower FID = better)")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{-v:g}"))
    else:
        ax.set_ylabel("SSIM vs dense reference")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _as_artifact(src, export_dir: Path, batches, log) -> Path:
    """An ONNX export or engine folder for ``src``, exporting model sources (once; reused later)."""
    path = Path(str(src))
    if path.is_dir() and ((path / MODEL_JSON).is_file() or (path / ENGINE_JSON).is_file()):
        return path
    if not export_dir.exists():
        from ..export import to_onnx

        log(f"exporting {src} -> {export_dir}")
        to_onnx(src, export_dir, batch=batches)
    return export_dir


def _sweep_member(dense, fraction, work, method, data, finetune_steps, calibration_images, max_timesteps, batches,
                  progress, log) -> Path:
    from ..pruning.recipe import prune_source
    from ..sources.unet import require_unconditional

    name = f"macs-{fraction:g}"
    folder = work / name
    if not folder.exists():
        started = time.perf_counter()
        pruned = prune_source(dense, method=method, target_macs=fraction, data=data, num_images=calibration_images,
                              max_timesteps=max_timesteps, progress=progress,
                              check=lambda model: require_unconditional(model, "Selection (--sweep)"))
        pruned.save(folder)
        report_ = pruned.report
        log(f"pruned {name}: {report_.macs_after / report_.macs_before:.1%} of dense MACs in {time.perf_counter() - started:.0f} s")
    model_dir = folder
    if finetune_steps:
        model_dir = work / f"{name}-ft{finetune_steps}"
        if not model_dir.exists():
            from ..training.finetune import finetune

            finetune(folder, model_dir, data=data, steps=finetune_steps, batch_size=32,
                     warmup_steps=min(50, max(1, finetune_steps // 5)), ema_decay=0.995, teacher=str(dense),
                     kd_weight=1.0, checkpoint_every=0, progress=progress)
    return _as_artifact(model_dir, work / f"{model_dir.name}-onnx", batches, log)
